"""The ``csv`` logger: Lightning's CSVLogger, except that a continued run keeps its rows.

Lightning's writer deletes ``metrics.csv`` when its folder holds one, so a run continued
after an interruption (or with more epochs) kept only the rows of its last launch. Here the
earlier rows stay and the new ones are appended, as TensorBoard's event files are: rows
logged between the last checkpoint and an interruption appear again after the resume, with
the same ``step``. landseg's own ``logs/scalars.jsonl`` holds the exact history.

Lightning has no public way to append: the writer's ``_check_log_dir_exists`` and the logger's
``_experiment`` and ``_fs`` are private (pyproject.toml pins Lightning's minor version, and
tests/test_lightning_private.py names them when a release changes them).
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's writer, starting from the columns of an existing ``metrics.csv``."""

    def _check_log_dir_exists(self) -> None:
        try:
            with open(self.metrics_file_path, newline="", encoding="utf-8") as handle:
                self.metrics_keys = next(csv.reader(handle), [])
        except FileNotFoundError:
            pass


class AppendingCSVLogger(CSVLogger):
    """CSVLogger whose ``metrics.csv`` survives a continued run (see the module's docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        writer = self._experiment
        assert isinstance(writer, ExperimentWriter)  # the one set above
        return writer


def make_csv_logger(folder: Path) -> CSVLogger:
    return AppendingCSVLogger(folder, name="", version="")
