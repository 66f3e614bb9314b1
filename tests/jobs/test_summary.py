"""Job runs with a stand-in for training: failures, interruptions, resumes and the summary."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from landseg.cli.main import main
from landseg.core.files import atomic_write_json
from landseg.jobs import runner
from landseg.jobs.log import LOG_FILE, JobLog
from landseg.jobs.summary import (
    aggregate,
    bootstrap_mean_ci,
    bootstrap_mean_cis,
    build_summary,
    format_table,
    summary_markdown,
    task_test_metrics,
    write_summary,
)
from landseg.runs.folder import RunFolder
from tests.helpers import Log, entry, fabricated_job, write_config

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
    assert (job / "summary_classes.png").read_bytes().startswith(b"\x89PNG")
    assert summary["bootstrap"] == {
        "resamples": 10000,
        "seed": 0,
        "confidence": 0.95,
        "subjects": 2,
        "min_subjects": 5,
        "reliable": False,
    }
    assert summary["overall"]["Average/IoU"]["ci_low"] == pytest.approx(0.4)
    assert summary["overall"]["Average/IoU"]["ci_high"] == pytest.approx(0.6)
    assert summary["overall"]["water/IoU"] == {
        "mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None
    }  # fmt: skip
    assert "fewer than 5 test subjects: the interval is not reliable" in markdown

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


# ---------------------------------------------------------------------------- intervals


def test_bootstrap_of_equal_values_is_the_value() -> None:
    assert bootstrap_mean_ci([0.3]) == (0.3, 0.3)
    assert bootstrap_mean_ci([0.3, 0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert bootstrap_mean_ci([0.0, 1.0]) == (0.0, 1.0)  # means 0, 0.5, 1: tails are 0 and 1
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci([0.1, float("nan")])


def test_bootstrap_matches_a_plain_loop_and_is_seeded() -> None:
    values = [0.5, 0.7, 0.2, 0.4, 0.9]
    rng = np.random.default_rng(3)
    draws = rng.integers(0, len(values), size=(200, len(values)))
    means = [statistics.fmean(values[i] for i in draw) for draw in draws]
    low, high = np.quantile(means, [0.025, 0.975])
    assert bootstrap_mean_ci(values, resamples=200, seed=3) == (
        pytest.approx(low, abs=1e-12),
        pytest.approx(high, abs=1e-12),
    )
    found = bootstrap_mean_ci(values)
    assert found == bootstrap_mean_ci(values)
    assert found == pytest.approx((0.34, 0.74))
    assert found[0] < statistics.fmean(values) < found[1]
    assert bootstrap_mean_ci(values, seed=1) != found
    narrow = bootstrap_mean_ci(values, confidence=0.5)
    assert found[0] < narrow[0] < narrow[1] < found[1]
    # columns share the draws: each column's interval is its own
    lows, highs = bootstrap_mean_cis(np.array([values, [0.1] * 5, values[::-1]]).T)
    assert (lows[0], highs[0]) == found and (lows[1], highs[1]) == (0.1, 0.1)
    assert (lows[2], highs[2]) == bootstrap_mean_ci(values[::-1])


# ---------------------------------------------------------------------------- fabricated jobs


def cells(table: str) -> list[list[str]]:
    """The cells of a Markdown table, less its rule line."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    return [rows[0], *rows[2:]]


def five_subjects(n: int) -> dict[str, list[dict[str, Any] | None]]:
    """n test subjects z1..zn: mIoU 0.5, 0.6, ...; building 0.1, 0.2, ...; no water in z1."""
    return {
        f"z{k}": [entry(0.4 + 0.1 * k, 0.1 * k, None if k == 1 else 0.9 - 0.1 * k)]
        for k in range(1, n + 1)
    }


def test_summary_has_intervals_reliable_from_five_subjects(tmp_path: Path) -> None:
    groups = ["z1", "z2", "z3", "z4", "z5"]
    job = fabricated_job(tmp_path / "five", groups, five_subjects(5))
    summary = write_summary(job, Log(job))  # type: ignore[arg-type]
    assert summary == json.loads((job.folder / "summary.json").read_text())
    assert summary == build_summary(job, {t["task_id"]: t for t in Log(job).tasks()})
    assert summary["complete"] and summary["bootstrap"]["reliable"]
    assert summary["bootstrap"]["subjects"] == 5
    mious = [0.4 + 0.1 * k for k in range(1, 6)]
    low, high = bootstrap_mean_ci(mious)
    assert summary["overall"]["Average/IoU"] == {
        "mean": pytest.approx(0.7),
        "std": pytest.approx(statistics.pstdev(mious)),
        "n": 5,
        "ci_low": low,
        "ci_high": high,
    }
    assert low == pytest.approx(0.58) and high == pytest.approx(0.82)
    water = summary["overall"]["water/IoU"]  # absent from z1: 4 values, flagged
    assert water["n"] == 4
    waters = [0.9 - 0.1 * k for k in range(2, 6)]
    assert (water["ci_low"], water["ci_high"]) == bootstrap_mean_ci(waters)

    markdown = (job.folder / "summary.md").read_text()
    assert "| overall      |           | 0.7000 ± 0.1414 [0.5800, 0.8200] |" in markdown
    assert (
        "over the test subjects' means (5 test subjects), and in brackets the 95% bootstrap"
        in markdown
    )
    assert "(10000 resamples of the test subjects, seed 0)" in markdown
    # the headline columns are all reliable: no note there; the water column is flagged
    head, classes = markdown.split("## Per-class IoU per test subject")
    assert "not reliable" not in head
    water_low, water_high = bootstrap_mean_ci(waters)
    table = next(part for part in classes.split("\n\n") if part.startswith("| test subject"))
    assert cells(table) == [
        ["test subject", "building", "water", "mIoU"],
        ["z1", "0.1000", "-", "0.5000"],
        ["z2", "0.2000", "0.7000", "0.6000"],
        ["z3", "0.3000", "0.6000", "0.7000"],
        ["z4", "0.4000", "0.5000", "0.8000"],
        ["z5", "0.5000", "0.4000", "0.9000"],
        [
            "overall",
            "0.3000 [0.1800, 0.4200]",
            f"0.5500 [{water_low:.4f}, {water_high:.4f}] †",
            "0.7000 [0.5800, 0.8200]",
        ],
    ]
    assert "† fewer than 5 test subjects: the interval is not reliable." in classes
    assert (job.folder / "summary_classes.png").read_bytes().startswith(b"\x89PNG")
    assert (job.folder / "summary.png").read_bytes().startswith(b"\x89PNG")


def test_four_subjects_are_flagged_and_one_gives_a_degenerate_interval(tmp_path: Path) -> None:
    job = fabricated_job(tmp_path / "four", ["z1", "z2", "z3", "z4"], five_subjects(4))
    summary = build_summary(job, {t["task_id"]: t for t in Log(job).tasks()})
    assert summary["bootstrap"]["subjects"] == 4 and not summary["bootstrap"]["reliable"]
    low, high = bootstrap_mean_ci([0.4 + 0.1 * k for k in range(1, 5)])
    stats = summary["overall"]["Average/IoU"]
    assert (stats["ci_low"], stats["ci_high"]) == (low, high)
    markdown = summary_markdown(summary, "four")
    assert f"| 0.6500 ± 0.1118 [{low:.4f}, {high:.4f}] † |" in markdown
    head = markdown.split("## Per task")[0]  # what `landseg cv` prints
    assert "† fewer than 5 test subjects: the interval is not reliable." in head

    one = fabricated_job(tmp_path / "one", ["z1", "z2", "z3"], {"z2": [entry(0.6, 0.3, 0.2)]})
    summary = build_summary(one, {t["task_id"]: t for t in Log(one).tasks()})
    assert not summary["complete"] and summary["bootstrap"]["subjects"] == 1
    stats = summary["overall"]["Average/IoU"]
    assert (stats["mean"], stats["ci_low"], stats["ci_high"], stats["n"]) == (0.6, 0.6, 0.6, 1)


def test_subject_means_over_rotations_feed_the_interval(tmp_path: Path) -> None:
    results = {  # z1: rotations 0.4 and 0.6 (mean 0.5); z2 and z3: one result of two
        "z1": [entry(0.4, 0.2, 0.1), entry(0.6, 0.4, 0.3)],
        "z2": [entry(0.8, 0.6, 0.5), None],
        "z3": [None, entry(0.2, None, 0.1)],
    }
    job = fabricated_job(tmp_path / "rot", ["z1", "z2", "z3"], results, validation="rotations")
    summary = write_summary(job, Log(job))  # type: ignore[arg-type]
    assert summary["overall"]["Average/IoU"]["ci_low"] == bootstrap_mean_ci([0.5, 0.8, 0.2])[0]
    assert summary["overall"]["building/IoU"]["n"] == 2
    classes = (job.folder / "summary.md").read_text().split("## Per-class IoU")[1]
    assert "| z1           | 0.3000 " in classes and "| z3           | -  " in classes
