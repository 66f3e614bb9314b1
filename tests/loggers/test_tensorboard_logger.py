"""PhaseTensorBoardLogger: phase routing, config, rank zero, close and reopen (resume)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from landseg.loggers.tensorboard import PhaseTensorBoardLogger, find_phase_logger, split_metric


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("train_loss", ("train", "loss")),
        ("train_loss_epoch", ("train", "loss")),
        ("train_loss_step", ("train", "loss_step")),
        ("val_miou", ("val", "miou")),
        ("test_loss", ("test", "loss")),
        ("lr-SGD", ("train", "lr-SGD")),
        ("epoch", ("train", "epoch")),
        ("validation_x", ("train", "validation_x")),
    ],
)
def test_split_metric(key: str, expected: tuple[str, str]) -> None:
    assert split_metric(key) == expected


def test_metrics_routed_to_phase_runs(tmp_path: Path) -> None:
    root = tmp_path / "exp" / "v0" / "tensorboard"
    logger = PhaseTensorBoardLogger(root)
    assert (logger.name, logger.version, logger.log_dir) == ("exp", "v0", str(root))
    assert not root.exists()  # writers open lazily
    logger.log_metrics({"train_loss": torch.tensor(1.5), "lr-Adam": 0.01}, step=3)
    logger.log_metrics({"val_loss": 1.25, "val_miou": 0.5}, step=3)
    logger.finalize("success")
    assert scalars(root / "train", "loss") == [(3, 1.5)]
    assert scalars(root / "train", "lr-Adam") == [(3, pytest.approx(0.01))]
    assert scalars(root / "val", "loss") == [(3, 1.25)]
    assert not (root / "test").exists()


def test_resume_appends_to_same_folders(tmp_path: Path) -> None:
    first = PhaseTensorBoardLogger(tmp_path, name="e", version="v")
    first.log_metrics({"val_loss": 2.0}, step=1)
    first.finalize("failed")
    second = PhaseTensorBoardLogger(tmp_path, name="e", version="v")
    second.log_metrics({"val_loss": 1.0}, step=2)
    second.finalize("success")
    second.log_metrics({"val_loss": 0.5}, step=3)  # a test run after fit reopens the writer
    second.finalize("success")
    assert len(list((tmp_path / "val").glob("events.out.tfevents.*"))) == 3
    assert scalars(tmp_path / "val", "loss") == [(1, 2.0), (2, 1.0), (3, 0.5)]


def test_hyperparams_written_once(tmp_path: Path) -> None:
    logger = PhaseTensorBoardLogger(tmp_path, name="e", version="v")
    config = {"config": {"train_setup": {"lr": 0.01, "bands": [1, 2]}, "x": None}, "n": 3}
    logger.log_hyperparams(config)
    logger.log_hyperparams({"other": 1})
    logger.finalize("success")
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    texts = accumulator.Tensors("config/text_summary")
    assert len(texts) == 1
    table = texts[0].tensor_proto.string_val[0].decode()
    assert (
        "| config/train_setup/lr | 0.01 |" in table
        and "| config/train_setup/bands | [1, 2] |" in table
    )
    assert "other" not in table
    assert set(accumulator.PluginTagToContent("hparams")) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }


def test_nothing_written_off_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = PhaseTensorBoardLogger(tmp_path / "tb")
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.log_hyperparams({"a": 1})
    logger.writer("val").add_image("x", torch.zeros(3, 2, 2), 0)  # a no-op object
    logger.finalize("success")
    assert not (tmp_path / "tb").exists()


def test_untraceable_graph_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Untraceable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            raise RuntimeError("cannot trace me")

    logger = PhaseTensorBoardLogger(tmp_path)
    model = Untraceable().train()
    with caplog.at_level(logging.WARNING):
        logger.log_graph(model, torch.zeros(1, 3, 8, 8))
    assert "model graph not written" in caplog.text
    assert model.training  # mode restored
    logger.log_graph(model)  # Lightning's own call, without input: ignored
    logger.finalize("failed")


def test_find_phase_logger() -> None:
    tb = PhaseTensorBoardLogger(Path("unused"))
    assert find_phase_logger(SimpleNamespace(loggers=[])) is None
    assert find_phase_logger(SimpleNamespace(loggers=[object(), tb])) is tb


def test_the_printed_tensorboard_command_runs_without_an_activated_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``make demo`` the environment is not activated: a bare ``tensorboard`` is not
    found, so the command names the script installed beside this Python."""
    import os
    import sys

    from landseg.loggers.tensorboard import tensorboard_command

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.chdir(Path(sys.executable).parent.parent.parent)  # e.g. the repository root
    program, *rest = tensorboard_command(Path("runs/demo")).split()
    assert rest == ["--logdir", "runs/demo"]
    assert program != "tensorboard"
    assert Path(program).name == "tensorboard" and os.access(program, os.X_OK)
    assert not Path(program).is_absolute()  # relative to the working folder, as a user types it
