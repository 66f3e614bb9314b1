"""`landseg validate` prints the plan of the command its config is for (train, cv, tune), built
by that command's own planning function: each refusal the command makes comes out of validate
unchanged (the same lines, the same exit status), and validate writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from landseg.cli.main import main
from tests.helpers import cv_config, write_config


def snapshot(folder: Path) -> dict[Path, bytes | None]:
    """Every file and folder under ``folder``, with the files' bytes."""
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def same_refusal(
    command: str, path: Path, capsys: pytest.CaptureFixture, expected: str
) -> list[str]:
    """The command refuses the config with ``expected`` in its first line; validate refuses
    it with the very same lines and status, and writes nothing."""
    before = snapshot(path.parent)
    validated = run(["validate", "-c", str(path)], capsys)
    assert snapshot(path.parent) == before  # validate wrote nothing
    commanded = run([command, "-c", str(path)], capsys)
    assert commanded[0] == 2 and commanded[1], commanded
    assert expected in commanded[1][0], commanded[1]
    assert validated == commanded
    return commanded[1]


# ---------------------------------------------------------------------------- train


def train_refusals() -> dict[str, tuple[Callable[[dict, Path], None], str]]:
    """Each way a run folder is refused: (how the config and folder are made, the line)."""

    def existing(config: dict, runs: Path) -> None:
        config["output_setup"].update(name_exp_log="exp", version_name="v1")
        run = runs / "exp" / "v1"
        run.mkdir(parents=True)
        (run / "run.json").write_text('{"status": "finished", "epochs_done": 1}')

    def nothing_to_continue(config: dict, runs: Path) -> None:
        config["output_setup"].update(name_exp_log="exp", version_name="v1")
        config["train_setup"]["continue_training"] = True

    def archived(config: dict, runs: Path) -> None:
        config["output_setup"].update(name_exp_log="exp", version_name="archived_v1_2026-12-01")
        config["train_setup"]["continue_training"] = True
        run = runs / "exp" / "archived_v1_2026-12-01"
        run.mkdir(parents=True)
        (run / "run.json").write_text('{"status": "finished", "epochs_done": 1}')

    def other_settings(config: dict, runs: Path) -> None:
        config["output_setup"].update(name_exp_log="exp", version_name="v1")
        run = runs / "exp" / "v1"
        run.mkdir(parents=True)
        (run / "run.json").write_text('{"status": "interrupted", "epochs_done": 1}')
        (run / "config.json").write_text(json.dumps(config))  # as the run recorded it
        config["train_setup"]["continue_training"] = True
        config["train_setup"]["model_name"] = "unet"  # may not change on continue

    def bad_value(config: dict, runs: Path) -> None:
        config["train_setup"]["scheduler_config"] = {"patience": "two"}

    return {
        "existing version": (existing, "output_setup.version_name: run folder"),
        "nothing to continue": (nothing_to_continue, "train_setup.continue_training: no run"),
        "archived": (archived, "an archived run is kept as it was validated"),
        "other settings": (other_settings, "cannot continue this run with these settings"),
        "bad value": (bad_value, "train_setup.scheduler_config.patience: ReduceLROnPlateau"),
    }


@pytest.mark.parametrize("case", list(train_refusals()))
def test_train_s_refusals_come_out_of_validate_unchanged(
    case: str, demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make, expected = train_refusals()[case]
    make(demo_config, tmp_path / "runs")
    path = write_config(tmp_path / "c.json", demo_config)
    same_refusal("train", path, capsys, expected)


def test_validate_prints_train_s_plan(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The run folder, whether it starts or continues, what continuing changes, precision."""
    demo_config["output_setup"].update(name_exp_log="exp", version_name="v1")
    demo_config["device_setup"].update(precision="32-true", channels_last=False)
    path = write_config(tmp_path / "c.json", demo_config)
    run = tmp_path / "runs" / "exp" / "v1"
    capsys.readouterr()
    assert main(["validate", "-c", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        f"{path}: valid",
        f"  run folder {run}: starts",
        "  precision 32-true (precision set in the config)",
    ], lines
    unnamed = {**demo_config, "output_setup": {**demo_config["output_setup"], "version_name": None}}
    assert main(["validate", "-c", str(write_config(tmp_path / "u.json", unnamed))]) == 0
    assert (
        capsys.readouterr().out.splitlines()[1].endswith(": starts (named by the time it starts)")
    )
    run.mkdir(parents=True)
    (run / "run.json").write_text(
        '{"status": "interrupted", "epochs_done": 1, "precision": "32-true", '
        '"channels_last": false, "fast_paths_reason": "precision set in the config"}'
    )
    (run / "config.json").write_text(json.dumps(demo_config))
    demo_config["train_setup"].update(continue_training=True, epochs=7)
    write_config(path, demo_config)
    assert main(["validate", "-c", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    before = json.loads((run / "config.json").read_text())["train_setup"].get("epochs")
    assert lines[1:4] == [
        f"  run folder {run}: continues",
        f"  continued with train_setup.epochs changed: {before!r} -> 7",
        "  precision 32-true (precision set in the config)",
    ], lines


# ---------------------------------------------------------------------------- cv


def test_cv_s_refusals_come_out_of_validate_unchanged(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from landseg.jobs.cv_plan import plan_cv
    from landseg.jobs.runner import start_job

    runs = tmp_path / "runs"
    config = cv_config(demo_dir, runs, groups=["1", "2", "9"])
    path = write_config(tmp_path / "cv.json", config)
    same_refusal("cv", path, capsys, "cross_validation.groups: unknown group(s) 9")
    # a job folder that holds a search
    config = cv_config(demo_dir, runs)
    write_config(path, config)
    (runs / "job").mkdir(parents=True)
    (runs / "job" / "study.db").write_bytes(b"")
    same_refusal("cv", path, capsys, "holds a search (landseg tune)")
    (runs / "job" / "study.db").unlink()
    # a job started with another config: refused by the job log, which validate reads
    plan = plan_cv(path, [])
    start_job(plan.job, plan.rows, "first", retry_failed=False).close()
    lr = config["train_setup"]["lr"]
    config["train_setup"]["lr"] = 0.5
    write_config(path, config)
    lines = same_refusal("cv", path, capsys, "job")
    assert lines[0].endswith(f"train_setup.lr: {lr!r} in the job, 0.5 now")


def test_validate_prints_cv_s_plan_with_what_a_rerun_continues(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from landseg.jobs.cv_plan import plan_cv
    from landseg.jobs.runner import start_job

    path = write_config(tmp_path / "cv.json", cv_config(demo_dir, tmp_path / "runs"))
    job = tmp_path / "runs" / "job"
    capsys.readouterr()
    assert main(["validate", "-c", str(path)]) == 0
    assert f"  job folder {job}: starts" in capsys.readouterr().out.splitlines()
    plan = plan_cv(path, [])
    start_job(plan.job, plan.rows, "first", retry_failed=False).close()
    assert main(["validate", "-c", str(path)]) == 0
    assert f"  job folder {job}: continues (2 pending)" in capsys.readouterr().out.splitlines()


# ---------------------------------------------------------------------------- tune


def tune_config(demo_dir: Path, runs: Path) -> dict:
    config = cv_config(demo_dir, runs)
    config["output_setup"]["name_exp_log"] = "search"
    config["search"] = {"trials": 2, "params": {"train_setup.lr": {"float": [1e-4, 1e-2]}}}
    return config


def test_tune_s_refusals_come_out_of_validate_unchanged(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("optuna")
    runs = tmp_path / "runs"
    config = tune_config(demo_dir, runs)
    config["search"]["params"]["train_setup.no_such_key"] = {"choice": [1, 2]}
    path = write_config(tmp_path / "tune.json", config)
    same_refusal("tune", path, capsys, "search.params.train_setup.no_such_key")
    # a folder that holds a cv job
    write_config(path, tune_config(demo_dir, runs))
    (runs / "search").mkdir(parents=True)
    (runs / "search" / "job.sqlite").write_bytes(b"")
    same_refusal("tune", path, capsys, "holds a cross-validation job (landseg cv)")
    # a trial's job refused: groups that do not exist
    (runs / "search" / "job.sqlite").unlink()
    config = tune_config(demo_dir, runs)
    config["cross_validation"]["groups"] = ["1", "9"]
    write_config(path, config)
    same_refusal("tune", path, capsys, "cross_validation.groups: unknown group(s) 9")


def test_validate_prints_tune_s_plan(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_config(tmp_path / "tune.json", tune_config(demo_dir, tmp_path / "runs"))
    capsys.readouterr()
    assert main(["validate", "-c", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:4] == [
        "  cross-validation: 3 groups, 1 test subjects, 2 tasks, tiles per task: train 8, "
        "val 8, test 8",
        "  search: 2 trials of 2 tasks over train_setup.lr, objective val_miou",
        f"  tune folder {tmp_path / 'runs' / 'search'}: starts",
    ], lines


def test_validate_for_other_machines_leaves_auto_precision_to_them(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--no-device-check: the config is for compute nodes, whose hardware picks bf16 or not."""
    demo_config["device_setup"]["precision"] = "auto"
    path = write_config(tmp_path / "c.json", demo_config)
    capsys.readouterr()
    assert main(["validate", "-c", str(path), "--no-device-check"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == (
        "  precision auto: chosen on the machine that trains"
    )
    assert main(["validate", "-c", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("  precision ")  # this machine's
