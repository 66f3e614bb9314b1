"""The job folder: every path of a cross-validation job (``landseg cv``) and of a search
(``landseg tune``, whose trials are cv jobs in its ``trials/`` folder).

The one owner of their layout, as :class:`landseg.runs.folder.RunFolder` is of a run's: other
modules ask :class:`JobFolder` for a path (``folder.log``, ``folder.summary_json``,
``folder.task("zone1")``...) and never join a file name onto a job folder themselves.

A cv job folder::

    job.json  rows.csv  job.sqlite  status.json  spatial_blocks.png
    summary.json  summary.md  summary.png  summary_classes.png
    tasks/<task id>/            (each a run folder, with its train/val/test CSV files)

A search folder::

    study.db  summary.json  summary.md  trials.csv  importance.png  best_config.yaml
    .landseg-cache/  trials/trial-NNN/   (each a cv job folder)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landseg.config.schema import LandsegConfig


@dataclass(frozen=True)
class JobFolder:
    """A cv job's folder, or a search's: its paths, and what kind of folder it holds."""

    path: Path

    # a cv job
    JOB_FILE = "job.json"
    ROWS_FILE = "rows.csv"
    TASKS_DIR = "tasks"
    LOG_FILE = "job.sqlite"
    #: The job's state as JSON, for ``landseg cv status`` on another host.
    SNAPSHOT_FILE = "status.json"
    BLOCK_MAP_FILE = "spatial_blocks.png"
    SUMMARY_PNG = "summary.png"
    SUMMARY_CLASSES_PNG = "summary_classes.png"
    # both: a job's summary, or a search's results
    SUMMARY_JSON = "summary.json"
    SUMMARY_MD = "summary.md"
    # a search
    STUDY_FILE = "study.db"
    TRIALS_DIR = "trials"
    TRIALS_CSV = "trials.csv"
    IMPORTANCE_PNG = "importance.png"
    BEST_CONFIG = "best_config.yaml"
    CACHE_DIR = ".landseg-cache"
    #: The split CSV files of a task, in its folder.
    SPLITS = ("train", "val", "test")

    # ------------------------------------------------------------------ where

    @classmethod
    def of_cv(cls, config: LandsegConfig) -> JobFolder:
        """``<output_folder>/<name_exp_log or "cv">``: stable, so re-running the command
        resumes the job."""
        out = config.output_setup
        return cls(out.output_folder / (out.name_exp_log or "cv"))

    @classmethod
    def of_search(cls, config: LandsegConfig) -> JobFolder:
        """``<output_folder>/<name_exp_log or "tune">``: stable, so re-running the command
        resumes the search."""
        out = config.output_setup
        return cls(out.output_folder / (out.name_exp_log or "tune"))

    @classmethod
    def above_task(cls, task: Path) -> JobFolder:
        """The job folder of a task's folder ``<job>/tasks/<task id>``."""
        return cls(task.parent.parent)

    @classmethod
    def of_task(cls, run: Path) -> JobFolder | None:
        """The cv job whose task ``run`` is (``<job>/tasks/<task id>``), or None."""
        job = cls.above_task(run)
        return job if run.parent.name == cls.TASKS_DIR and job.is_job else None

    # ------------------------------------------------------------------ a cv job

    @property
    def job_file(self) -> Path:
        return self.path / self.JOB_FILE

    @property
    def rows(self) -> Path:
        """Every row of the job with its group."""
        return self.path / self.ROWS_FILE

    @property
    def tasks(self) -> Path:
        return self.path / self.TASKS_DIR

    def task(self, task_id: str) -> Path:
        """A task's run folder."""
        return self.tasks / task_id

    def task_csv(self, task_id: str, split: str) -> Path:
        """A task's ``train.csv``, ``val.csv`` or ``test.csv``."""
        if split not in self.SPLITS:
            raise ValueError(f"split {split!r}: one of {', '.join(self.SPLITS)}")
        return self.task(task_id) / f"{split}.csv"

    @property
    def log(self) -> Path:
        """The job log (SQLite), read and written on the host that runs the job only."""
        return self.path / self.LOG_FILE

    @property
    def snapshot(self) -> Path:
        return self.path / self.SNAPSHOT_FILE

    @property
    def block_map(self) -> Path:
        """The map of the spatial blocks (``cross_validation.spatial_blocks``)."""
        return self.path / self.BLOCK_MAP_FILE

    @property
    def summary_png(self) -> Path:
        return self.path / self.SUMMARY_PNG

    @property
    def summary_classes_png(self) -> Path:
        return self.path / self.SUMMARY_CLASSES_PNG

    @property
    def is_job(self) -> bool:
        """Whether a cv job was started here (its job log exists)."""
        return self.log.is_file()

    # ------------------------------------------------------------------ both

    @property
    def summary_json(self) -> Path:
        return self.path / self.SUMMARY_JSON

    @property
    def summary_md(self) -> Path:
        return self.path / self.SUMMARY_MD

    # ------------------------------------------------------------------ a search

    @property
    def study(self) -> Path:
        """The search's Optuna storage."""
        return self.path / self.STUDY_FILE

    @property
    def trials(self) -> Path:
        return self.path / self.TRIALS_DIR

    def trial(self, number: int) -> JobFolder:
        """A trial's cv job folder, ``trials/trial-NNN``."""
        return JobFolder(self.trials / self.trial_name(number))

    @staticmethod
    def trial_name(number: int) -> str:
        return f"trial-{number:03d}"

    @property
    def trials_csv(self) -> Path:
        return self.path / self.TRIALS_CSV

    @property
    def importance(self) -> Path:
        return self.path / self.IMPORTANCE_PNG

    @property
    def best_config(self) -> Path:
        return self.path / self.BEST_CONFIG

    @property
    def cache(self) -> Path:
        """The decoded-tile cache the trials share (unless data_source.cache_dir says)."""
        return self.path / self.CACHE_DIR

    @property
    def is_search(self) -> bool:
        """Whether a search was started here (its study exists)."""
        return self.study.exists()
