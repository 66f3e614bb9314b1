"""A run killed with SIGKILL and continued ends exactly like an uninterrupted run.

Float32 (``32-true``) runs and, since most modern machines take that path (``precision:
auto`` picks it where the hardware computes bf16 natively), a ``bf16-mixed`` one: bf16
autocast runs on any CPU, slowly without native support, so every host tests it."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from landseg.cli.main import main
from tests.helpers import assert_same_end, sigkill_when, stop_and_resume_config, write_config


def kill_after_first_checkpoint(config_path: Path, run: Path) -> int:
    """Start `landseg train` in a subprocess and SIGKILL it right after its first checkpoint."""
    return sigkill_when(
        ["train", "-c", str(config_path)],
        lambda: any((run / "checkpoints").glob("*-step=*.ckpt")),
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "precision"),
    [
        ("continue_training", "32-true"),
        ("resume_checkpoint", "32-true"),
        ("continue_training", "bf16-mixed"),
    ],
)
def test_sigkill_mid_epoch_then_continue_equals_uninterrupted(
    how: str,
    precision: str,
    demo_config: dict,
    tmp_path: Path,
    reference_run: Callable[[dict], Path],
) -> None:
    demo_config["device_setup"]["precision"] = precision
    demo_config["train_setup"].update(
        epochs=3, batch_size=4, checkpoint_every_n_steps=2, deterministic=True
    )
    demo_config["output_setup"].update(
        name_exp_log="exp", save_top_k=2, use_tensorboard=False, get_prediction=False
    )
    demo_config["data_source"]["data_augmentation"] = {"train": ["rotation90", "radiometry"]}
    demo_config["data_source"].pop("test_file")
    reference = reference_run(demo_config)

    demo_config["output_setup"]["version_name"] = "killed"
    killed_config = write_config(tmp_path / "killed.json", demo_config)
    run = tmp_path / "runs" / "exp" / "killed"
    assert kill_after_first_checkpoint(killed_config, run) == -signal.SIGKILL
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    stale = run / "checkpoints" / ".lightunet-last.ckpt.x1y2.tmp"  # as a killed write leaves it
    stale.write_bytes(b"half a checkpoint")

    if how == "continue_training":
        demo_config["train_setup"]["continue_training"] = True
        assert main(["train", "-c", str(write_config(tmp_path / "cont.json", demo_config))]) == 0
    else:  # the checkpoint alone: its config travels inside it
        step_checkpoint = next((run / "checkpoints").glob("*-step=*.ckpt"))
        assert main(["train", "--resume", str(step_checkpoint)]) == 0

    assert list(json.loads((run / "history.json").read_text())) == ["0", "1", "2"]
    # the train loss and mIoU of the epoch cut mid-way cover all its batches, not only the
    # ones after the resume (the metric states travel in the step checkpoint)
    assert_same_end(run, reference)
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and len(state["resumed"]) == 1
    assert state["precision"] == precision
    assert not stale.exists() and not list(run.rglob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("loader_workers", [0, 2])
def test_sigkill_at_an_epoch_end_then_continue_equals_uninterrupted(
    loader_workers: int, demo_config: dict, tmp_path: Path, reference_run: Callable[[dict], Path]
) -> None:
    """Killed once the first epoch's `-last` exists (no step checkpoints): the run resumes at
    that epoch's end, where Lightning runs the epoch-end hooks again, then a new epoch. With
    loader workers too, whose iterator Lightning creates before it sets the resumed epoch.

    The stop-and-continue tests' config (``stop_and_resume_config``): its uninterrupted
    reference, with and without loader workers, is the one test_interrupt.py compares with,
    trained once per session."""
    stop_and_resume_config(demo_config, loader_workers)
    demo_config["output_setup"]["name_exp_log"] = "exp"
    reference = reference_run(demo_config)

    demo_config["output_setup"]["version_name"] = "killed"
    run = tmp_path / "runs" / "exp" / "killed"
    last = run / "checkpoints" / "lightunet-last.ckpt"
    killed = write_config(tmp_path / "killed.json", demo_config)
    assert sigkill_when(["train", "-c", str(killed)], last.exists) == -signal.SIGKILL
    demo_config["train_setup"]["continue_training"] = True
    assert main(["train", "-c", str(write_config(tmp_path / "cont.json", demo_config))]) == 0

    # train loss and mIoU of every epoch, none carried over; metric states in the weights
    assert_same_end(run, reference)
