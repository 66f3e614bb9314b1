"""RunLogger used directly (custom hooks): scalars file, arrays, figures, closing, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from landseg.callbacks.run_logger import RunLogger, read_scalars
from landseg.loggers.figures import confusion_matrix_figure
from landseg.loggers.tensorboard import PhaseTensorBoardLogger


def test_summarize_one_line_to_file_and_tensorboard(tmp_path: Path) -> None:
    tb = PhaseTensorBoardLogger(tmp_path / "tensorboard")
    with RunLogger(tmp_path, tb) as run_logger:
        run_logger.summarize(5, "val", loss=torch.tensor(0.25), miou=np.float32(0.5))
        run_logger.summarize(6, loss=1.0)
    tb.finalize("success")
    rows = read_scalars(tmp_path)
    assert [(r["phase"], r["step"], r["loss"]) for r in rows] == [
        ("val", 5, 0.25),
        ("train", 6, 1.0),
    ]
    assert rows[0]["miou"] == 0.5 and "time" in rows[0]
    val = EventAccumulator(str(tmp_path / "tensorboard" / "val")).Reload()
    assert [e.value for e in val.Scalars("miou")] == [0.5]
    with RunLogger(tmp_path) as run_logger:
        run_logger.summarize(8, loss=float("nan"))
    assert read_scalars(tmp_path)[-1]["loss"] is None  # strict JSON, like the history file
    with pytest.raises(TypeError, match="numbers"):
        run_logger.summarize(7, loss="high")
    with pytest.raises(ValueError, match="unknown phase"):
        run_logger.summarize(7, "predict", loss=1.0)


def test_torn_last_line_skipped_then_repaired(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as run_logger:
        run_logger.summarize(1, loss=1.0)
        run_logger.summarize(2, loss=0.9)
    path = tmp_path / "logs" / "scalars.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # a crash in the middle of the last write
    assert [r["step"] for r in read_scalars(tmp_path)] == [1]
    with RunLogger(tmp_path) as resumed:  # the next writer ends the torn line first
        resumed.summarize(2, loss=0.8)
    assert [(r["step"], r["loss"]) for r in read_scalars(tmp_path)] == [(1, 1.0), (2, 0.8)]
    assert len(path.read_bytes().splitlines()) == 3


def test_resumed_steps_replace_rolled_back_rows(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as run_logger:
        for step in (1, 2, 3):
            run_logger.summarize(step, "val", loss=float(step))
        run_logger.summarize(3, "train", loss=3.0)
        run_logger.summarize(2, "val", loss=20.0)  # resumed from the checkpoint of step 2
    rows = read_scalars(tmp_path)
    assert [(r["phase"], r["step"], r["loss"]) for r in rows] == [
        ("val", 1, 1.0),
        ("train", 3, 3.0),
        ("val", 2, 20.0),
    ]


def test_rows_of_one_step_with_other_scalars_are_all_kept(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as run_logger:
        run_logger.summarize(5, "train", loss=0.5)
        run_logger.summarize(5, "train", grad_norm=2.0)  # a custom hook, same step
        run_logger.summarize(5, "val", loss=0.7)
    rows = read_scalars(tmp_path)
    assert [(r["phase"], r["step"]) for r in rows] == [("train", 5), ("train", 5), ("val", 5)]
    assert rows[1]["grad_norm"] == 2.0 and "loss" not in rows[1]


def test_buffer_flush_npz(tmp_path: Path) -> None:
    run_logger = RunLogger(tmp_path)
    run_logger.buffer("confusion_val", np.eye(3, dtype=np.int64), step=2)
    run_logger.buffer("confusion_val", torch.ones(3, 3, dtype=torch.int64), step=4)
    run_logger.buffer("embedding", np.zeros(5))
    assert not (tmp_path / "arrays").exists()  # kept in memory until flushed
    run_logger.flush()
    with np.load(tmp_path / "arrays" / "confusion_val.npz") as saved:
        assert saved["steps"].tolist() == [2, 4]
        assert saved["values"].shape == (2, 3, 3) and saved["values"].dtype == np.int64
    with np.load(tmp_path / "arrays" / "embedding.npz") as saved:
        assert saved["values"].shape == (1, 5) and saved["steps"].tolist() == [-1]
    with pytest.raises(ValueError, match="shape"):
        run_logger.buffer("confusion_val", np.eye(4), step=6)
    run_logger.close()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_buffer_continues_saved_arrays_on_resume(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as run_logger:
        for step in (2, 4, 6):
            run_logger.buffer("cm", np.full((2, 2), step), step=step)
    with RunLogger(tmp_path) as resumed:  # resumed from the checkpoint of step 4
        resumed.buffer("cm", np.full((2, 2), 60), step=6)
    with np.load(tmp_path / "arrays" / "cm.npz") as saved:
        assert saved["steps"].tolist() == [2, 4, 6]
        assert saved["values"][:, 0, 0].tolist() == [2, 4, 60]


def test_figure_png_and_tensorboard_image(tmp_path: Path) -> None:
    tb = PhaseTensorBoardLogger(tmp_path / "tensorboard")
    run_logger = RunLogger(tmp_path, tb)
    fig = confusion_matrix_figure(np.eye(2), ["a", "b"], normalize=True)
    run_logger.figure("confusion_val", fig, step=3)
    run_logger.close()
    assert run_logger.closed
    tb.finalize("success")
    assert (tmp_path / "figures" / "confusion_val.png").read_bytes()[:4] == b"\x89PNG"
    val = EventAccumulator(str(tmp_path / "tensorboard" / "val")).Reload()
    assert [e.step for e in val.Images("confusion_val")] == [3]


def test_close_then_log_again(tmp_path: Path) -> None:
    run_logger = RunLogger(tmp_path)
    run_logger.summarize(1, loss=1.0)
    assert not run_logger.closed
    run_logger.close()
    run_logger.close()  # idempotent
    assert run_logger.closed
    run_logger.summarize(2, loss=0.5)  # e.g. trainer.test after fit
    assert not run_logger.closed
    run_logger.close()
    assert [r["step"] for r in read_scalars(tmp_path)] == [1, 2]
