"""The checkpoints' owner (landseg.runs.checkpoints): names written and read back, which file is
best or latest, what a resume prunes, safe loading, and load_weights' report."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from landseg.core.errors import LandsegError
from landseg.runs.checkpoints import (
    CheckpointFolder,
    CheckpointName,
    PthFiles,
    WeightsFileError,
    WeightsMismatchError,
    base_name,
    base_of,
    export_stem,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from landseg.runs.folder import RunFolder


def config(model_name: str, model_filename: str | None = None) -> Any:
    """The two settings base_name reads."""
    return SimpleNamespace(
        output_setup=SimpleNamespace(model_filename=model_filename),
        train_setup=SimpleNamespace(model_name=model_name),
    )


def touch(folder: Path, *names: str, step: int = 0) -> list[Path]:
    """Checkpoints named ``names``, written one after the other (increasing mtimes)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        torch.save({"global_step": step + i}, path)
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- names


def test_base_name_is_model_filename_stem_else_model_name() -> None:
    assert base_name(config("lightunet")) == "lightunet"
    assert base_name(config("smp:Unet")) == "smp-Unet"  # no ':' in file names
    assert base_name(config("unet", "my_model.ckpt")) == "my_model"
    assert base_name(config("unet", "my.model.pth")) == "my.model"


def test_names_are_written_and_read_back() -> None:
    folder = CheckpointFolder(Path("c"))
    written = {
        folder.file("m", "loss", epoch=3, val_loss=0.12345): CheckpointName(
            "m", "loss", epoch=3, value=0.1235
        ),
        folder.file("m", "miou", epoch=12, val_miou=0.5): CheckpointName(
            "m", "miou", epoch=12, value=0.5
        ),
        folder.file("m-x", "step", step=120): CheckpointName("m-x", "step", step=120),
        folder.file("m", "last"): CheckpointName("m", "last"),
        folder.file("task-0", "epoch", epoch=7): CheckpointName("task-0", "epoch", epoch=7),
    }
    assert [p.name for p in written] == [
        "m-loss-epoch=003-val_loss=0.1235.ckpt",
        "m-miou-epoch=012-val_miou=0.5000.ckpt",
        "m-x-step=0000120.ckpt",
        "m-last.ckpt",
        "task-0-epoch=007.ckpt",
    ]
    for path, name in written.items():
        assert CheckpointName.parse(path) == name
    assert CheckpointName.parse("m-last-v1.ckpt") == CheckpointName("m", "last")
    assert CheckpointName.parse("m-last.pth") is None
    assert CheckpointName.parse("whatever.ckpt") is None
    assert [CheckpointName.parse(p).resumable for p in written] == [  # type: ignore[union-attr]
        False,
        False,
        True,
        True,
        False,
    ]


def test_export_and_pth_names_and_their_base_read_back(tmp_path: Path) -> None:
    assert export_stem(tmp_path, "m") == tmp_path / "m-best"
    files = PthFiles(tmp_path, "m")
    assert (files.model.name, files.optimizer.name, files.train_state.name) == (
        "m.pth",
        "optimizer_m.pth",
        "train_m.pth",
    )
    assert base_of(tmp_path / "m-loss-epoch=003-val_loss=0.1000.ckpt") == "m"
    assert base_of(export_stem(tmp_path, "m").with_suffix(".pth")) == "m"
    assert base_of(files.model) == "m"
    assert base_of(tmp_path / "other.ckpt") == "other"


# ---------------------------------------------------------------------------- choosing


def test_best_is_lowest_val_loss_then_newest_epoch_else_last(tmp_path: Path) -> None:
    folder = CheckpointFolder(tmp_path / "a")
    touch(
        folder.path,
        "m-loss-epoch=002-val_loss=0.3000.ckpt",
        "m-loss-epoch=004-val_loss=0.3000.ckpt",  # the same loss later: the later one
        "m-loss-epoch=001-val_loss=nan.ckpt",  # nan: never best
        "m-miou-epoch=001-val_miou=0.9000.ckpt",
        "m-last.ckpt",
    )
    assert folder.best() == folder.path / "m-loss-epoch=004-val_loss=0.3000.ckpt"
    only_last = CheckpointFolder(tmp_path / "b")
    touch(only_last.path, "m-step=0000010.ckpt", "m-last.ckpt")
    assert only_last.best() == only_last.path / "m-last.ckpt"
    foreign = CheckpointFolder(tmp_path / "c")
    touch(foreign.path, "a.ckpt", "b.ckpt")
    assert foreign.best() == foreign.path / "b.ckpt"
    assert CheckpointFolder(tmp_path / "none").best() is None


def test_latest_has_the_most_steps_and_skips_a_torn_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = CheckpointFolder(tmp_path)
    last, step = touch(folder.path, "m-last.ckpt", "m-step=0000005.ckpt")
    torch.save({"global_step": 9}, last)  # written first, but 9 steps in
    torch.save({"global_step": 5}, step)
    torch.save({"global_step": 99}, tmp_path / "m-loss-epoch=001-val_loss=0.1000.ckpt")
    assert folder.latest() == last  # a top-k file is never resumed from
    assert RunFolder(tmp_path.parent, False).latest_checkpoint() is None  # no checkpoints/
    torn = tmp_path / "m-step=0000010.ckpt"
    torn.write_bytes(last.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="landseg"):
        assert folder.latest() == last
    assert any(f"skipping unreadable checkpoint {torn}" in m for m in caplog.messages)


class Crafted:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_a_crafted_checkpoint_is_refused_not_skipped(tmp_path: Path) -> None:
    crafted = tmp_path / "m-last.ckpt"
    torch.save({"global_step": 1, "x": Crafted()}, crafted, pickle_module=pickle)
    with pytest.raises(LandsegError, match=r"m-last.ckpt: refused: it holds Python objects"):
        CheckpointFolder(tmp_path).latest()


def test_prune_after_removes_what_was_written_after_the_resume_point(tmp_path: Path) -> None:
    folder = CheckpointFolder(tmp_path)
    old, resumed, newer, newest = touch(
        tmp_path,
        "m-loss-epoch=001-val_loss=0.5000.ckpt",
        "m-step=0000010.ckpt",
        "m-loss-epoch=002-val_loss=0.4000.ckpt",
        "m-last.ckpt",
    )
    assert sorted(folder.prune_after(resumed)) == sorted([newer, newest])
    assert sorted(tmp_path.iterdir()) == sorted([old, resumed])
    assert sorted(folder.prune_after(None)) == sorted([old, resumed])  # from scratch: all


def test_keep_newest_step_drops_the_older_step_checkpoints(tmp_path: Path) -> None:
    folder = CheckpointFolder(tmp_path)
    first, second, last, third = touch(
        tmp_path, "m-step=0000010.ckpt", "m-step=0000020.ckpt", "m-last.ckpt", "m-step=0000005.ckpt"
    )
    assert folder.keep_newest_step() == [first, second]  # by time written, not by number
    assert sorted(tmp_path.iterdir()) == sorted([last, third])


def test_save_checkpoint_writes_whole_files_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m-last.ckpt"
    save_checkpoint({"w": torch.ones(2)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["m-last.ckpt"]  # no temporary left


# ---------------------------------------------------------------------------- load_weights


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, classes, 1)


def filled(net: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.fill_(value)
    return net


def test_load_weights_of_a_whole_network_from_pth_and_ckpt(tmp_path: Path) -> None:
    source = filled(Net(), 0.5)
    torch.save(source.state_dict(), tmp_path / "net.pth")
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 1},
        tmp_path / "net.ckpt",
    )
    for name in ("net.pth", "net.ckpt"):
        target = filled(Net(), 0.0)
        report = load_weights(target, tmp_path / name)
        assert report.fits and report.loaded == len(source.state_dict())
        assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
        for key, value in target.state_dict().items():
            assert torch.equal(value, source.state_dict()[key]), key


def test_load_weights_reports_exact_missing_and_unexpected_keys_and_loads_nothing(
    tmp_path: Path,
) -> None:
    weights = filled(Net(), 0.5).state_dict()
    del weights["head.bias"], weights["encoder.1.running_mean"]
    weights["extra.weight"] = torch.zeros(1)
    torch.save(weights, tmp_path / "w.pth")
    target = filled(Net(), 0.0)
    with pytest.raises(WeightsMismatchError) as raised:
        load_weights(target, tmp_path / "w.pth")
    report = raised.value.report
    assert report.missing == ["encoder.1.running_mean", "head.bias"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == []
    assert raised.value.problems == [
        f"{tmp_path / 'w.pth'}: its weights do not fit the model: 2 weights missing (e.g. "
        "encoder.1.running_mean), 1 unexpected (e.g. extra.weight)"
    ]
    assert all(float(p.detach().abs().sum()) == 0 for p in target.parameters())  # none loaded


def test_load_weights_reports_shapes_and_may_leave_out_unexpected(tmp_path: Path) -> None:
    other = Net(classes=5).state_dict()
    other["aux.weight"] = torch.zeros(2)
    torch.save(other, tmp_path / "five.pth")
    with pytest.raises(WeightsMismatchError) as raised:
        load_weights(Net(), tmp_path / "five.pth", allow_unexpected=True)
    assert raised.value.report.mismatched == [
        ("head.bias", (5,), (3,)),
        ("head.weight", (5, 8, 1, 1), (3, 8, 1, 1)),
    ]
    assert "head.bias is (5,) there, (3,) here" in raised.value.report.detail()
    same = Net().state_dict()
    same["aux.weight"] = torch.zeros(2)
    torch.save(same, tmp_path / "aux.pth")
    report = load_weights(Net(), tmp_path / "aux.pth", allow_unexpected=True)
    assert report.unexpected == ["aux.weight"] and not report.missing
    with pytest.raises(WeightsMismatchError):
        load_weights(Net(), tmp_path / "aux.pth")  # strict by default


def test_load_weights_into_a_part_from_its_own_file_or_a_whole_network(tmp_path: Path) -> None:
    source = filled(Net(), 0.25)
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    torch.save(source.state_dict(), tmp_path / "whole.pth")
    for name in ("encoder.pth", "whole.pth"):
        target = filled(Net(), 0.0)
        report = load_weights(target, tmp_path / name, "encoder")
        assert report.part == "encoder" and report.loaded == len(source.encoder.state_dict())
        assert torch.equal(target.encoder[0].weight, source.encoder[0].weight)
        assert float(target.head.weight.detach().abs().sum()) == 0  # the head: as it was
    with pytest.raises(LandsegError, match="the model has no part 'decoder'"):
        load_weights(Net(), tmp_path / "whole.pth", "decoder")


def test_a_file_without_weights_is_named(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "val_loss": 0.5}, tmp_path / "train_m.pth")
    with pytest.raises(WeightsFileError, match=r"train_m.pth: not a network's weights"):
        load_weights(Net(), tmp_path / "train_m.pth")
    with pytest.raises(WeightsFileError, match=r"nope.pth: checkpoint not found"):
        load_weights(Net(), tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(WeightsFileError, match=r"text.pth: not a torch checkpoint file"):
        load_weights(Net(), tmp_path / "text.pth")
