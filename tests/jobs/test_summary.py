"""Job runs with a stand-in for training: failures, interruptions, resumes and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from landseg.cli import main
from landseg.io import atomic_write_json
from landseg.jobs import runner
from landseg.jobs.progress import LOG_FILE, JobLog
from landseg.jobs.summary import aggregate, format_table, task_test_metrics
from landseg.runs.folder import RunFolder
from tests.conftest import write_config

MIOU = {"test-1__val-2": 0.5, "test-1__val-3": 0.7, "test-2__val-1": 0.2, "test-2__val-3": 0.4}


class FakeTraining:
    """Writes what a finished train run leaves behind; fails or interrupts on demand."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.interrupt: set[str] = set()

    def __call__(self, job, task, *, verbose: bool = False) -> Path:
        self.calls.append(task.id)
        if task.id in self.interrupt:
            raise KeyboardInterrupt
        if task.id in self.fail:
            raise RuntimeError("boom")
        folder = job.task_dir(task)
        entry = {
            "cm_macro": [[1, 0], [0, 1]],
            "Average/IoU": MIOU[task.id],
            "water/IoU": None,
            "loss": 1.0,
            "step": 4,
            "learning rate": 0.01,
            "checkpoint": "x.ckpt",
        }
        atomic_write_json(folder / "history_test.json", {"1": entry})
        RunFolder(folder, True).update_state(status="finished", best={"val_miou": 0.1})
        return folder


@pytest.fixture
def fake(monkeypatch) -> FakeTraining:
    training = FakeTraining()
    monkeypatch.setattr(runner, "train_task", training)
    return training


def test_aggregate_and_table() -> None:
    stats = aggregate([{"a": 1.0, "b": None}, {"a": 3.0, "b": None}, {"a": 2.0}])
    assert stats["a"] == {"mean": 2.0, "std": pytest.approx(0.816496580927726), "n": 3}
    assert stats["b"] == {"mean": None, "std": None, "n": 0}
    assert aggregate([{"a": 0.5}])["a"] == {"mean": 0.5, "std": 0.0, "n": 1}
    assert format_table(["x", "long"], [["1", "2"]]) == "| x | long |\n| - | ---- |\n| 1 | 2    |\n"


def test_failed_task_is_recorded_and_the_job_goes_on(
    fake: FakeTraining, make_cv_config, tmp_path: Path, capsys
) -> None:
    config = write_config(tmp_path / "cv.json", make_cv_config(test_groups=["1", "2"]))
    job = tmp_path / "runs" / "job"
    fake.fail.add("test-2__val-1")
    assert main(["cv", "-c", str(config)]) == 1
    assert fake.calls == list(MIOU)
    out = capsys.readouterr().out
    assert "1 tasks missing; re-run the same command" in out
    summary = json.loads((job / "summary.json").read_text())
    assert not summary["complete"] and summary["tasks_finished"] == 3
    assert summary["missing"] == [
        {"task": "test-2__val-1", "status": "failed", "error": "RuntimeError: boom"}
    ]
    one = summary["test_subjects"]["1"]
    assert one["finished"] == 2 and one["rotations"] == 2
    assert one["metrics"]["Average/IoU"] == {"mean": 0.6, "std": pytest.approx(0.1), "n": 2}
    assert one["metrics"]["water/IoU"] == {"mean": None, "std": None, "n": 0}
    assert set(one["metrics"]) == {"Average/IoU", "water/IoU", "loss"}
    assert summary["test_subjects"]["2"]["metrics"]["Average/IoU"]["n"] == 1
    assert summary["overall"]["Average/IoU"]["mean"] == pytest.approx((0.6 + 0.4) / 2)
    assert "RuntimeError: boom" in (job / "tasks" / "test-2__val-1" / "error.txt").read_text()
    markdown = (job / "summary.md").read_text()
    assert (
        "## Missing tasks" in markdown
        and "- test-2__val-1: failed (RuntimeError: boom)" in markdown
    )
    assert (job / "summary.png").read_bytes().startswith(b"\x89PNG")

    assert main(["cv", "status", str(job)]) == 0
    status = capsys.readouterr().out
    assert "3 finished, 0 running, 0 pending, 1 failed of 4 tasks" in status
    assert "test subjects still to train: 2 (rotation 2/2)" in status
    assert "| test-2__val-1 | failed   | main" in status

    fake.calls.clear()
    assert main(["cv", "-c", str(config)]) == 1  # failed tasks wait for --retry-failed
    assert fake.calls == []
    fake.fail.clear()
    assert main(["cv", "-c", str(config), "--retry-failed"]) == 0
    assert fake.calls == ["test-2__val-1"]
    assert json.loads((job / "summary.json").read_text())["complete"]
    assert not (job / "tasks" / "test-2__val-1" / "error.txt").exists()


def test_interrupted_task_goes_back_to_pending(
    fake: FakeTraining, make_cv_config, tmp_path: Path, capsys
) -> None:
    config = write_config(tmp_path / "cv.json", make_cv_config())
    fake.interrupt.add("test-1__val-3")
    assert main(["cv", "-c", str(config)]) == 130
    with JobLog(tmp_path / "runs" / "job" / LOG_FILE, create=False) as log_db:
        assert log_db.counts() == {"finished": 1, "running": 0, "pending": 1, "failed": 0}
        assert log_db.events("test-1__val-3")[-1]["event"] == "reset"
    fake.interrupt.clear()
    assert main(["cv", "status", "-c", str(config)]) == 0
    assert "1 finished, 0 running, 1 pending" in capsys.readouterr().out
    assert main(["cv", "-c", str(config)]) == 0
    assert fake.calls == ["test-1__val-2", "test-1__val-3", "test-1__val-3"]


def test_a_changed_config_is_refused(
    fake: FakeTraining, make_cv_config, tmp_path: Path, capsys
) -> None:
    config = make_cv_config()
    assert main(["cv", "-c", str(write_config(tmp_path / "a.json", config))]) == 0
    lr = config["train_setup"]["lr"]
    config["train_setup"]["lr"] = lr * 2
    config["device_setup"]["num_workers"] = 2  # hardware settings may change
    assert main(["cv", "-c", str(write_config(tmp_path / "b.json", config))]) == 2
    assert "was started with another config" in capsys.readouterr().err
    config["train_setup"]["lr"] = lr
    assert main(["cv", "-c", str(write_config(tmp_path / "c.json", config))]) == 0


def test_test_metrics_reads_scalars_only(tmp_path: Path) -> None:
    assert task_test_metrics(tmp_path) is None
    (tmp_path / "history_test.json").write_text('{"3": {"a": 1, "b": [1], "c": true, "d": null}}')
    assert task_test_metrics(tmp_path) == {"a": 1, "d": None}


def test_each_task_gets_a_fresh_process_state(monkeypatch) -> None:
    import os

    import torch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1234")
    threads = torch.get_num_threads()
    with runner.isolated_task():  # what a DDP task leaves behind
        os.environ["LOCAL_RANK"] = "0"
        os.environ["MASTER_PORT"] = "5678"
        torch.set_num_threads(1)
    assert "LOCAL_RANK" not in os.environ and os.environ["MASTER_PORT"] == "1234"
    assert torch.get_num_threads() == threads
