"""Command-line behaviour users rely on: bare ``--tta``, cv configs with predictions,
validate's row count of a job, and what a cv re-run says about the tasks it skips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from landseg.cli.main import build_parser, main
from tests.helpers import cv_config, write_config

PREDICT = ["predict", "--run", "r", "--input", "i.tif", "--output", "o"]


@pytest.mark.parametrize(
    ("extra", "mode"),
    [(["--tta"], "d4"), (["--tta", "flips"], "flips"), (["--tta", "rot90"], "rot90")],
)
def test_bare_tta_means_d4(extra: list[str], mode: str) -> None:
    """``--tta [d4|flips|rot90]``: alone it was refused with 'expected one argument'."""
    assert build_parser().parse_args([*PREDICT, *extra]).tta == mode
    assert build_parser().parse_args(["evaluate", *extra]).tta == mode


def test_bare_tta_before_another_option_is_d4() -> None:
    args = build_parser().parse_args([*PREDICT[:1], "--tta", *PREDICT[1:]])
    assert (args.tta, args.run) == ("d4", "r")


def test_a_train_config_with_predictions_and_no_test_file_runs_as_cv(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """ODEON's usual config (get_prediction true, no test_file) given a cross_validation
    section: each task tests, and predicts, on its held-out groups."""
    from landseg.jobs.plan import prepare_job

    config = cv_config(demo_dir, tmp_path / "runs")
    config["output_setup"]["get_prediction"] = True
    path = write_config(tmp_path / "cv.json", config)
    capsys.readouterr()
    assert main(["validate", "-c", str(path)]) == 0, capsys.readouterr().err
    job, _ = prepare_job(path, [], dry_run=True)  # what landseg cv prepares
    task = job.plan.tasks[0]
    task_config = job.task_config(task)
    assert task_config.output_setup.get_prediction
    assert task_config.data_source.test_file == job.task_dir(task) / "test.csv"
    # a train config is still refused: train predicts on data_source.test_file
    del config["cross_validation"]
    capsys.readouterr()
    assert main(["validate", "-c", str(write_config(tmp_path / "train.json", config))]) == 2
    assert "error: output_setup.get_prediction: predictions are made on the test split" in (
        capsys.readouterr().err
    )


def test_validate_counts_a_job_s_rows_once(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """zones.csv (24 rows) as the job's file: 24 rows in 1 CSV file, not 48 in 2."""
    rows = len((demo_dir / "zones.csv").read_text().strip().splitlines()) - 1  # a header line
    path = write_config(tmp_path / "cv.json", cv_config(demo_dir, tmp_path / "runs"))
    capsys.readouterr()
    assert main(["validate", "-c", str(path)]) == 0
    assert f"checked {rows} rows in 1 CSV file: headers of " in capsys.readouterr().out


def test_a_cv_rerun_says_how_many_finished_tasks_it_skips(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from landseg.jobs.log import Worker
    from landseg.jobs.plan import prepare_job
    from landseg.jobs.runner import start_job

    path = write_config(tmp_path / "cv.json", cv_config(demo_dir, tmp_path / "runs"))
    job, rows = prepare_job(path, [])
    with caplog.at_level(logging.INFO, logger="landseg"):
        with start_job(job, rows, "first", retry_failed=False) as log_db:
            claim = log_db.claim(Worker.here("main", "first"))
            assert claim is not None
            log_db.finish(claim, {}, "main")
        run_file = job.task_dir(job.plan.task(claim.task_id)) / "run.json"
        run_file.write_text(json.dumps({"status": "finished"}))  # its run folder is there
        assert "skipped" not in caplog.text  # the first launch skips nothing
        caplog.clear()
        with start_job(job, rows, "second", retry_failed=False):
            pass
    assert "1 of 2 tasks finished in an earlier launch: skipped" in caplog.messages


def test_predict_plans_before_it_writes(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The plan (inputs, model, options) is complete, and refused or accepted, before the
    output folder exists; executing it writes the scenes it names."""
    from landseg.cli.predict import execute_predict, plan_predict
    from tests.helpers import demo_task, save_checkpoint

    checkpoint = save_checkpoint(
        demo_task(demo_dir, tmp_path), tmp_path / "run" / "checkpoints" / "m.ckpt"
    )
    scene = demo_dir / json.loads((demo_dir / "demo.json").read_text())["data_source"]["test_file"]
    image = Path(scene.read_text().splitlines()[-1].split(",")[0])
    image = image if image.is_absolute() else demo_dir / image
    output = tmp_path / "out"
    argv = ["predict", "--run", str(checkpoint), "--input", str(image), "--output", str(output)]
    refused = build_parser().parse_args([*argv, "--vectorize", "--classes", "lava"])
    with pytest.raises(Exception, match="--classes: "):
        plan_predict(refused)
    plan = plan_predict(build_parser().parse_args([*argv, "--tta", "--no-progress"]))
    assert not output.exists()  # planning wrote nothing
    assert plan.inputs == [image] and plan.tta == "d4"
    assert plan.describe() == [
        f"1 scene(s) -> {output} (classes)",
        f"model {checkpoint}, test-time augmentation d4",
        "tiles 256 px, overlap 64 px, batches of 8, 1 worker(s)",
    ]
    assert execute_predict(plan) == [output / f"{image.stem}.tif"]
