"""`landseg cv compare JOB_A JOB_B`: paired differences, shared subjects, differing settings."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from landseg.cli.main import main
from landseg.jobs.summary import bootstrap_mean_ci, write_summary
from tests.helpers import Log, entry, fabricated_job

A = {"z1": 0.5, "z2": 0.6, "z3": 0.7, "z4": 0.8, "z5": 0.9, "z6": 0.4}
B = {"z1": 0.55, "z2": 0.6, "z3": 0.8, "z4": 0.8, "z5": 0.95, "z7": 0.3}
SHARED = ["z1", "z2", "z3", "z4", "z5"]


def finished_job(folder: Path, values: dict[str, float], **options) -> Path:
    """A job folder with job.json and summary.json; each rotation of a subject gets its value
    plus an offset, the offsets summing to 0 over the rotations (the subject's mean is its
    value)."""
    groups = list(values)
    rotations = options.get("validation") == "rotations"
    n = len(groups) - 1 if rotations else 1
    offsets = [0.01 * (2 * r - (n - 1)) for r in range(n)]
    results = {
        g: [entry(v + o, 0.5, 0.5) for o in offsets] if rotations else [entry(v, 0.5, 0.5)]
        for g, v in values.items()
    }
    job = fabricated_job(folder, groups, results, **options)
    write_summary(job, Log(job))  # type: ignore[arg-type]
    return folder


@pytest.fixture
def jobs(tmp_path: Path) -> tuple[Path, Path]:
    a = finished_job(tmp_path / "runs-a" / "a", A)
    b = finished_job(tmp_path / "runs-b" / "b", B, validation="rotations", lr=0.002, epochs=9)
    return a, b


def test_compare_paired_difference_and_settings(jobs: tuple[Path, Path], capsys) -> None:
    a, b = jobs
    assert main(["cv", "compare", str(a), str(b), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    diffs = [B[s] - A[s] for s in SHARED]
    b_means = {s: result["per_subject"][s]["b"] for s in SHARED}
    assert b_means == {s: pytest.approx(B[s]) for s in SHARED}  # mean over 6 rotations
    assert [result["per_subject"][s]["diff"] for s in SHARED] == pytest.approx(diffs)
    assert result["shared_subjects"] == 5 and list(result["per_subject"]) == SHARED
    assert result["mean_diff"] == pytest.approx(0.04)
    low, high = bootstrap_mean_ci([result["per_subject"][s]["diff"] for s in SHARED])
    assert (result["ci_low"], result["ci_high"]) == (low, high)
    assert 0 < low < 0.04 < high <= 0.1
    assert result["bootstrap"]["reliable"] and result["bootstrap"]["seed"] == 0
    assert (result["only_a"], result["only_b"]) == (["z6"], ["z7"])
    assert result["mean_a"] == pytest.approx(statistics.fmean(A[s] for s in SHARED))
    # lr, validation and epochs differ (a continued run may change epochs, but the results
    # depend on it); the output folder and the job's name do not count
    assert result["settings"] == {
        "cross_validation.validation": {"a": 1, "b": "rotations"},
        "train_setup.epochs": {"a": 1000, "b": 9},
        "train_setup.lr": {"a": 0.001, "b": 0.002},
    }

    assert main(["cv", "compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert f"A: {a}\nB: {b}\n" in text
    assert "| z3           | 0.7000        | 0.8000        | +0.1000 |" in text
    assert "| mean         | 0.7000        | 0.7400        | +0.0400 |" in text
    assert (
        f"Average/IoU, B - A: +0.0400, 95% interval [{low:+.4f}, {high:+.4f}] (paired "
        "bootstrap over 5 shared test subjects, 10000 resamples, seed 0); the interval "
        "excludes 0\n"
    ) in text
    assert "not reliable" not in text
    assert "only in A (left out): z6\nonly in B (left out): z7\n" in text
    assert "settings that differ (3):" in text
    assert "| train_setup.lr              | 0.001 | 0.002       |" in text
    assert '| cross_validation.validation | 1     | "rotations" |' in text


def test_compare_other_metric_and_few_subjects(tmp_path: Path, capsys) -> None:
    a = finished_job(tmp_path / "a", {"z1": 0.5, "z2": 0.6, "z3": 0.7})
    b = finished_job(tmp_path / "b", {"z1": 0.5, "z2": 0.6, "z3": 0.7}, model_name="unet")
    assert main(["cv", "compare", str(a), str(b), "--metric", "loss"]) == 0
    text = capsys.readouterr().out
    assert "| z1           | 0.5000 | 0.5000 | +0.0000 |" in text
    assert "loss, B - A: +0.0000, 95% interval [+0.0000, +0.0000]" in text
    assert "the interval includes 0" in text
    assert "fewer than 5 shared test subjects: the interval is not reliable" in text
    assert "only in" not in text
    assert '| train_setup.model_name | "lightunet" | "unet" |' in text
    assert main(["cv", "compare", str(a), str(a)]) == 0
    assert "settings that differ: none that the results depend on" in capsys.readouterr().out


def error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == ""
    return lines[0]


def test_compare_errors_name_the_folder(jobs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    a, _ = jobs
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_line(["cv", "compare", str(empty), str(a)], capsys) == (
        f"error: {empty}: not a cross-validation job folder (no job.json)"
    )
    missing = tmp_path / "missing"
    assert error_line(["cv", "compare", str(a), str(missing)], capsys) == (
        f"error: {missing}: no such job folder"
    )
    unfinished = tmp_path / "unfinished"
    finished_job(unfinished, {"z1": 0.5, "z2": 0.6, "z3": 0.7})
    (unfinished / "summary.json").unlink()
    assert error_line(["cv", "compare", str(a), str(unfinished)], capsys) == (
        f"error: {unfinished}: no summary.json yet (it is written when `landseg cv` ends; "
        "run it again)"
    )
    other = finished_job(tmp_path / "other", {"y1": 0.5, "y2": 0.6, "y3": 0.7})
    assert error_line(["cv", "compare", str(a), str(other)], capsys) == (
        f"error: {other}: no test subject in common with {a} "
        "(A: z1, z2, z3, z4, z5, z6; B: y1, y2, y3)"
    )
    line = error_line(["cv", "compare", str(a), str(other), "--metric", "mIoU"], capsys)
    assert line.startswith(f"error: {a}: no test subject has a result for 'mIoU' (metrics: ")
    assert "Average/IoU" in line
