"""``device_setup.precision: auto`` (the default): bf16 mixed precision and channels-last where
the hardware computes bf16 natively, float32 elsewhere; recorded in run.json and kept by a
continued run; losses and metrics in float32; deterministic runs bit-identical run to run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from landseg.cli.main import main
from landseg.launch import hardware
from landseg.launch.hardware import choose_fast_paths
from landseg.tasks.segmentation import SegmentationTask
from tests.helpers import final_state, write_config


def pretend(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """This machine computes bf16 natively, or not (whatever it really does)."""
    monkeypatch.setattr(hardware, "native_bf16", lambda accelerator: (native, "pretended"))


@pytest.mark.parametrize(
    ("precision", "channels_last", "native", "expected"),
    [
        ("auto", "auto", True, ("bf16-mixed", True)),
        ("auto", "auto", False, ("32-true", False)),
        ("auto", False, True, ("bf16-mixed", False)),
        ("32-true", "auto", True, ("32-true", False)),  # today's behaviour, bit for bit
        ("bf16-mixed", "auto", False, ("bf16-mixed", True)),
        ("16-mixed", True, False, ("16-mixed", True)),
    ],
)
def test_auto_picks_bf16_and_channels_last_only_on_native_hardware(
    precision: str,
    channels_last: bool | str,
    native: bool,
    expected: tuple[str, bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pretend(monkeypatch, native)
    chosen = choose_fast_paths(precision, channels_last, "cpu")
    assert (chosen.precision, chosen.channels_last) == expected


def test_native_bf16_answers_for_this_machine() -> None:
    native, why = hardware.native_bf16("cpu")
    assert isinstance(native, bool) and why
    assert hardware.native_bf16("mps") == (False, "mps: bf16 is not chosen automatically there")


def test_losses_and_metrics_are_float32_from_bf16_logits(monkeypatch) -> None:
    config = {
        "data_source": {"train_file": "t.csv", "class_labels": ["a", "b", "c"]},
        "train_setup": {"model_name": "lightunet"},
        "output_setup": {"output_folder": "runs"},
        "device_setup": {"precision": "bf16-mixed", "channels_last": True},
    }
    task = SegmentationTask(config, 3, ["a", "b", "c"])
    seen: list[torch.dtype] = []
    loss_fn = task.loss_fn

    class Recording(torch.nn.Module):
        def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            seen.append(logits.dtype)
            return loss_fn(logits, mask)

    monkeypatch.setattr(task, "loss_fn", Recording())
    monkeypatch.setattr(task, "log", lambda *a, **k: None)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(2, 3, 32, 32, generator=generator),
        "mask": torch.randint(0, 3, (2, 32, 32), generator=generator),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert task(batch["image"]).dtype == torch.bfloat16  # the network runs in bf16
        loss = task._step(batch, "val")
    assert seen == [torch.float32] and loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = task(batch["image"]).float()
    assert torch.equal(loss, loss_fn(logits, batch["mask"]))  # float32 of the cast logits
    # the confusion matrix counts the argmax of the float32 logits, every pixel once
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(batch["mask"].flatten(), logits.argmax(1).flatten(), strict=True):
        expected[t, p] += 1
    assert torch.equal(task.val_metrics.confmat, expected)


@pytest.mark.slow
def test_auto_is_recorded_kept_on_continue_and_deterministic(
    demo_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretend(monkeypatch, True)
    # 1 epoch, then continued to 2: the two runs' equality and the continue need no more
    demo_config["train_setup"].update(epochs=1, batch_size=4, deterministic=True)
    demo_config["output_setup"].update(
        name_exp_log="exp", use_tensorboard=False, get_prediction=False
    )
    demo_config["data_source"].pop("test_file")
    for version in ("a", "b"):
        demo_config["output_setup"]["version_name"] = version
        assert (
            main(["train", "-c", str(write_config(tmp_path / f"{version}.json", demo_config))]) == 0
        )
    run = tmp_path / "runs" / "exp" / "a"
    state = json.loads((run / "run.json").read_text())
    assert (state["precision"], state["channels_last"]) == ("bf16-mixed", True)
    assert json.loads((run / "config.json").read_text())["device_setup"]["precision"] == "auto"
    a, b = final_state(run), final_state(run.parent / "b")
    assert a[0] == b[0] and a[2] == b[2] and a[3] == b[3]  # history, checkpoints, scalars
    for key, value in a[1].items():
        assert torch.equal(b[1][key], value), key
    checkpoint = torch.load(next((run / "checkpoints").glob("*-last.ckpt")), weights_only=True)
    weights = [t for k, t in checkpoint["state_dict"].items() if k.startswith("model.")]
    assert {t.dtype for t in weights if t.is_floating_point()} == {torch.float32}

    # continued on a machine without native bf16: the run keeps what it started with
    pretend(monkeypatch, False)
    demo_config["output_setup"]["version_name"] = "a"
    demo_config["train_setup"].update(epochs=2, continue_training=True)
    assert main(["train", "-c", str(write_config(tmp_path / "more.json", demo_config))]) == 0
    state = json.loads((run / "run.json").read_text())
    assert (state["precision"], state["channels_last"], state["epochs_done"]) == (
        "bf16-mixed",
        True,
        2,
    )


@pytest.mark.parametrize(("deterministic", "autotuned"), [(False, True), (True, False)])
def test_cudnn_picks_its_fastest_algorithms_unless_the_run_is_deterministic(
    deterministic: bool, autotuned: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from landseg.config.schema import LandsegConfig
    from landseg.runs.folder import RunFolder
    from landseg.training.trainer import build_trainer

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not autotuned)  # put back after
    config = LandsegConfig.model_validate(
        {
            "data_source": {"train_file": "t.csv", "class_labels": ["a", "b"]},
            "train_setup": {"model_name": "lightunet", "deterministic": deterministic},
            "output_setup": {"output_folder": str(tmp_path)},
            "device_setup": {"precision": "32-true"},  # what a run resolves auto to
        }
    )
    build_trainer(config, RunFolder(tmp_path / "run"))
    assert torch.backends.cudnn.benchmark is autotuned
