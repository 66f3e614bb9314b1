"""JobFolder: the one owner of a cv job folder's and a search folder's paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from landseg.jobs.folder import JobFolder
from landseg.jobs.plan import job_folder, job_of_task
from landseg.planning.prepare import prepare_config


def test_a_cv_job_folder_layout(tmp_path: Path) -> None:
    job = JobFolder(tmp_path / "cv")
    assert {
        name: path.relative_to(job.path).as_posix()
        for name, path in {
            "job": job.job_file,
            "rows": job.rows,
            "log": job.log,
            "snapshot": job.snapshot,
            "map": job.block_map,
            "json": job.summary_json,
            "md": job.summary_md,
            "png": job.summary_png,
            "classes": job.summary_classes_png,
            "task": job.task("zone1"),
            "train": job.task_csv("zone1", "train"),
            "val": job.task_csv("zone1", "val"),
            "test": job.task_csv("zone1", "test"),
        }.items()
    } == {
        "job": "job.json",
        "rows": "rows.csv",
        "log": "job.sqlite",
        "snapshot": "status.json",
        "map": "spatial_blocks.png",
        "json": "summary.json",
        "md": "summary.md",
        "png": "summary.png",
        "classes": "summary_classes.png",
        "task": "tasks/zone1",
        "train": "tasks/zone1/train.csv",
        "val": "tasks/zone1/val.csv",
        "test": "tasks/zone1/test.csv",
    }
    with pytest.raises(ValueError, match="split 'validation'"):
        job.task_csv("zone1", "validation")


def test_a_search_folder_layout(tmp_path: Path) -> None:
    search = JobFolder(tmp_path / "tune")
    assert [
        p.relative_to(search.path).as_posix()
        for p in (
            search.study,
            search.summary_json,
            search.summary_md,
            search.trials_csv,
            search.importance,
            search.best_config,
            search.cache,
            search.trial(7).path,
            search.trial(7).log,
        )
    ] == [
        "study.db",
        "summary.json",
        "summary.md",
        "trials.csv",
        "importance.png",
        "best_config.yaml",
        ".landseg-cache",
        "trials/trial-007",
        "trials/trial-007/job.sqlite",
    ]


def test_what_a_folder_holds_and_a_tasks_job(tmp_path: Path) -> None:
    job = JobFolder(tmp_path / "cv")
    task = job.task("zone1")
    task.mkdir(parents=True)
    assert not job.is_job and not job.is_search
    assert JobFolder.of_task(task) is None and job_of_task(task) is None  # no job log yet
    job.log.write_bytes(b"")
    assert job.is_job and JobFolder.of_task(task) == job and job_of_task(task) == job.path
    assert JobFolder.of_task(job.path / "elsewhere" / "zone1") is None
    assert JobFolder.above_task(task) == job
    search = JobFolder(tmp_path / "tune")
    search.path.mkdir()
    search.study.write_bytes(b"")
    assert search.is_search and not search.is_job


def test_where_a_config_puts_its_job_and_its_search(demo_config: dict, tmp_path: Path) -> None:
    demo_config["output_setup"]["name_exp_log"] = None
    config = prepare_config(demo_config)
    assert JobFolder.of_cv(config).path == tmp_path / "runs" / "cv" == job_folder(config)
    assert JobFolder.of_search(config).path == tmp_path / "runs" / "tune"
    demo_config["output_setup"]["name_exp_log"] = "mine"
    named = prepare_config(demo_config)
    assert JobFolder.of_cv(named).path == JobFolder.of_search(named).path
    assert JobFolder.of_cv(named).path == tmp_path / "runs" / "mine"
