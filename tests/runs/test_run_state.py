"""run.json's one writer (RunFolder.write_state, reached by record_start, record_validation,
record_end): what a start, a continuation, a validation and an end leave in it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from landseg.launch.hardware import FastPaths
from landseg.planning.prepare import prepare_config
from landseg.runs.folder import RunFolder, RunState, resolve_run_folder

FAST = FastPaths("32-true", False, "the CPU")


def test_a_start_records_the_run_and_its_precision(demo_config: dict, tmp_path: Path) -> None:
    config = prepare_config(demo_config)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    state = run.record_start(config, {}, FAST)
    recorded = json.loads(run.run_file.read_text())
    assert recorded == state.to_json()
    assert recorded["status"] == "running" and recorded["pid"] == os.getpid()
    assert (recorded["precision"], recorded["channels_last"]) == ("32-true", False)
    assert recorded["fast_paths_reason"] == "the CPU"
    assert recorded["model"] == config.train_setup.model_name
    assert recorded["resumed"] == [] and recorded["epochs_done"] == 0


def test_a_continuation_keeps_the_start_best_and_epochs_and_adds_a_resume(
    demo_config: dict, tmp_path: Path
) -> None:
    config = prepare_config(demo_config)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    RunState(
        status="interrupted",
        started="2026-01-01T00:00:00+00:00",
        epochs_done=3,
        best={"val_loss": 0.5},
        resumed=[{"at": "x", "changed": {}}],
    ).write(run.path)
    changes = {"train_setup.epochs": [3, 6]}
    state = RunFolder(run.path, resuming=True).record_start(config, changes, FAST)
    assert state.status == "running" and state.started == "2026-01-01T00:00:00+00:00"
    assert state.epochs_done == 3 and state.best == {"val_loss": 0.5}
    assert len(state.resumed) == 2 and state.resumed[1]["changed"] == changes
    # a new run in a folder left by a failed start: nothing of the earlier state is kept
    fresh = RunFolder(run.path, resuming=False).record_start(config, {}, FAST)
    assert fresh.epochs_done == 0 and fresh.best == {} and fresh.resumed == []


def test_a_damaged_run_json_is_said_and_rewritten(
    demo_config: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = RunFolder(tmp_path / "run", resuming=True)
    run.path.mkdir()
    run.run_file.write_text('{"status": "fini')
    with caplog.at_level(logging.WARNING, logger="landseg"):
        state = run.record_start(prepare_config(demo_config), {}, FAST)
    assert caplog.messages == [
        f"{run.run_file}: unreadable (damaged?); rewritten without the run's start time and "
        "earlier resumes"
    ]
    assert RunState.read(run.path) == state


def test_validations_keep_the_best_metrics_and_the_end_is_recorded(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    RunState(status="running").write(tmp_path)
    run.record_validation(1, 0.5, 0.2)
    run.record_validation(2, 0.7, 0.4)  # worse loss, better mIoU
    run.record_validation(3, 0.6, 0.3)  # both worse than the best
    state = run.record_validation(4, None, None)  # a validation without metrics
    assert state.epochs_done == 4 and state.best == {"val_loss": 0.5, "val_miou": 0.4}
    ended = run.record_end("failed", error="DataError: x.tif unreadable")
    assert (ended.status, ended.error, ended.early_stopped) == (
        "failed",
        "DataError: x.tif unreadable",
        False,
    )
    assert ended.ended is not None
    finished = run.record_end("finished", early_stopped=True)
    assert finished.early_stopped and finished.error == "DataError: x.tif unreadable"
    assert RunState.read(tmp_path) == finished


def test_a_failed_start_removes_only_the_folders_it_made(demo_config: dict, tmp_path: Path) -> None:
    demo_config["output_setup"].update(name_exp_log="exp", version_name="v1")
    run = resolve_run_folder(prepare_config(demo_config))
    assert run.made == tmp_path / "runs"  # the output folder did not exist yet
    (run.path / "train.log").write_text("")
    assert run.remove_failed_start() and not (tmp_path / "runs").exists()

    (tmp_path / "runs" / "exp" / "v0").mkdir(parents=True)  # another run beside it
    run = resolve_run_folder(prepare_config(demo_config))
    assert run.made == run.path
    assert run.remove_failed_start()
    assert sorted(p.name for p in (tmp_path / "runs" / "exp").iterdir()) == ["v0"]

    run = resolve_run_folder(prepare_config(demo_config))
    RunState(status="failed").write(run.path)  # the start got as far as its run.json
    assert not run.remove_failed_start() and run.path.is_dir()
    assert not RunFolder(tmp_path / "runs" / "exp" / "v0").remove_failed_start()  # not made
