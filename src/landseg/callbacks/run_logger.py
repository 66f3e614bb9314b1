"""The run's logger: scalars, arrays and figures of the model's state, on disk and in the loggers.

Training code only populates loggers. :class:`RunLogger` is both a set of one-line methods for
custom hooks (``summarize``, ``buffer``, ``figure``, ``flush``) and a Lightning ``Callback`` that
calls them at the right moments, and cleans itself up however the run ends. Python's ``logging``
is for the state of the code; this is for the state of the model. It is always on, whichever
loggers (``output_setup.loggers``) the run has: ``landseg report`` reads its files, and it
sends its scalars and figures to every Lightning logger given to it (figures to those that take
images, see :mod:`landseg.loggers.registry`).

Files under the run folder::

    logs/scalars.jsonl      one JSON object per line: {"phase", "step", "epoch"?, "time", ...}
                            (non-finite values written as null)
    arrays/<name>.npz       {"steps": (N,), "values": (N, ...)}, e.g. confusion_val.npz
    figures/<name>.png      the latest figure of each name (TensorBoard keeps every step)

Every file is written by rename (:mod:`landseg.core.files`), except ``scalars.jsonl``, which is
appended
to: one ``write`` of one line, flushed and fsynced. A crash can then only leave the *last* line
incomplete; :func:`read_scalars` skips such a line, and the next writer ends it with a newline
before appending, so one torn line never corrupts the lines that follow it.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import lightning.pytorch as pl
import matplotlib.image
import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from matplotlib.figure import Figure

from landseg.callbacks.cadence import DrawsOnCadence, VisualCadence
from landseg.core.files import atomic_path, atomic_write_bytes
from landseg.loggers import figures
from landseg.loggers.registry import ImageSink
from landseg.loggers.tensorboard import check_phase, logger_step, split_metric
from landseg.runs.folder import RunFolder
from landseg.tasks.interface import segmentation_module

log = logging.getLogger(__name__)


def read_scalars(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``logs/scalars.jsonl``, as the run's history now stands.

    A line that does not parse (a write torn by a crash) is skipped. When a resumed run logs a
    step again, the rows of that phase logged after it by the interrupted run are dropped, so
    each phase's steps never go backwards, and so are the rows of that very step that hold any
    of the same scalars (the interrupted run's values of them); rows of the same step with
    other scalars (two ``summarize`` calls of one step) are kept.
    """
    path = RunFolder(Path(run_dir)).scalars
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number < len(lines):  # a torn *last* line is expected after a crash; others not
                log.warning("%s:%d: skipped an unreadable line", path, number)
            continue
        step = row.get("step")
        if step is not None:
            rows = [r for r in rows if not _replaced_by(r, row, step)]
        rows.append(row)
    return rows


class RunLogger(DrawsOnCadence):
    """Records the model's state for one run folder; also a Lightning callback.

    As a callback it records, on global rank 0 and outside the sanity check: each train epoch's
    ``train_*`` metrics and learning rate; after each validation (and test) the ``val_*``
    metrics, the confusion matrix (figures, and ``arrays/confusion_<phase>.npz`` per epoch) and
    per-class IoU/F1 bars from ``pl_module.last_confusion`` / ``last_report``; the learning
    curves when fit ends. It flushes and closes itself at teardown and on any exception.

    Figures of validations follow ``cadence`` (every epoch by default); the numbers behind
    them (rows, arrays) are recorded after every validation regardless, and a skipped final
    validation is drawn when fit ends.

    Args:
        run_dir: the run folder.
        loggers: Lightning loggers that ``summarize``'s scalars also go to (none: files only).
        cadence: which epochs' validations get figures (shared with the other drawing
            callbacks); ``None`` for every epoch.
        image_writers: where figures also go (see :mod:`landseg.loggers.registry`).
    """

    def __init__(
        self,
        run_dir: str | Path,
        loggers: Logger | list[Logger] | None = None,
        cadence: VisualCadence | None = None,
        image_writers: list[ImageSink] | None = None,
    ):
        super().__init__(cadence)
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        if isinstance(loggers, Logger):
            loggers = [loggers]
        self.loggers = list(loggers or [])
        if image_writers is None:  # loggers given alone: those of the registry that take images
            from landseg.loggers.registry import image_writers_of

            image_writers = image_writers_of(self.loggers)
        self.image_writers = image_writers
        self._skipped_step = 0
        self._buffers: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._unsaved: set[str] = set()
        self._scalars: IO[bytes] | None = None
        self._closed = False

    # ------------------------------------------------------------------ one-line API

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran and nothing was logged since (everything is on disk)."""
        return self._closed

    @rank_zero_only
    def summarize(self, step: int, phase: str = "train", **scalars: Any) -> None:
        """Log scalars of one phase at one step: ``summarize(step, "val", loss=0.3, miou=0.5)``."""
        check_phase(phase)
        values = {key: _to_number(value) for key, value in scalars.items()}
        for logger in self.loggers:
            logger.log_metrics({f"{phase}_{key}": value for key, value in values.items()}, step)
        self._append_row(phase, step, values)

    @rank_zero_only
    def buffer(self, name: str, array: Any, step: int | None = None) -> None:
        """Keep ``array`` in memory (with its step) until :meth:`flush` writes ``<name>.npz``.

        Every array of a name must have the same shape. Arrays saved by an interrupted run are
        loaded first; buffering a step again drops the ones of that step and after (resume).
        """
        value = np.array(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
        entries = self._buffers.get(name)
        if entries is None:
            entries = self._buffers[name] = self._load_array(name)
        if entries and entries[0][1].shape != value.shape:
            raise ValueError(
                f"buffer {name!r} holds arrays of shape {entries[0][1].shape}, got {value.shape}"
            )
        if step is not None:
            entries[:] = [(s, v) for s, v in entries if s < step]
        entries.append((-1 if step is None else step, value))
        self._unsaved.add(name)
        self._closed = False

    @rank_zero_only
    def flush(self) -> None:
        """Write every changed buffer to ``arrays/<name>.npz`` (compressed, by rename)."""
        for name in sorted(self._unsaved):
            entries = self._buffers[name]
            with atomic_path(self._array_path(name)) as tmp, open(tmp, "wb") as handle:
                np.savez_compressed(
                    handle,
                    steps=np.array([s for s, _ in entries], dtype=np.int64),
                    values=np.stack([v for _, v in entries]),
                )
        self._unsaved.clear()
        for logger in self.loggers:
            logger.save()

    @rank_zero_only
    def figure(self, name: str, fig: Figure, step: int, phase: str = "val") -> None:
        """Save ``fig`` as ``figures/<name>.png`` and send it to the loggers that take images.

        Pass figures from :mod:`landseg.loggers.figures` (outside pyplot); a pyplot figure must
        still be closed by its caller.
        """
        check_phase(phase)
        rgb = figures.figure_to_rgb(fig)
        png = io.BytesIO()
        matplotlib.image.imsave(png, rgb, format="png")
        atomic_write_bytes(self.folder.figures / f"{name}.png", png.getvalue())
        for write in self.image_writers:
            write(phase, name, rgb, step)
        self._closed = False

    def close(self) -> None:
        """Write pending arrays and close the scalars file; logging again reopens it."""
        try:
            self.flush()
        finally:
            if self._scalars is not None:
                self._scalars.close()
                self._scalars = None
            self._closed = True

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ Lightning hooks

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank reads callback_metrics: under DDP that read reduces the epoch metrics
        # across ranks, and a read on rank 0 alone would wait for the others forever.
        metrics = trainer.callback_metrics
        if not trainer.is_global_zero:
            return
        values = _phase_metrics(metrics, "train")
        if trainer.optimizers:
            values["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self._append_row("train", trainer.global_step, values, epoch=trainer.current_epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook *before* the module's, which is
        # where last_confusion and val_miou are computed.
        if not trainer.sanity_checking and trainer.is_global_zero:
            self._log_evaluation(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._log_evaluation(trainer, pl_module, "test")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)  # the final validation, if it was not drawn
        if not trainer.is_global_zero:
            return
        curves = figures.learning_curves(read_scalars(self.run_dir))
        self.figure("learning_curves", curves, logger_step(trainer), phase="train")
        self.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning routes errors and KeyboardInterrupt here before leaving fit/test; a failure
        # to close must not replace the error the user needs to see.
        try:
            self.close()
        except Exception:
            log.exception("could not close the run logger of %s", self.run_dir)

    # ------------------------------------------------------------------ internals

    def _log_evaluation(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, phase: str
    ) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        self._append_row(phase, step, _phase_metrics(trainer.callback_metrics, phase), epoch=epoch)
        confusion = segmentation_module(pl_module).last_confusion
        if confusion is not None:
            self.buffer(f"confusion_{phase}", confusion, step)
        # pictures at the step Lightning gives this evaluation's scalars in the loggers
        picture_step = logger_step(trainer)
        if phase != "val" or self.should_draw(trainer):
            with self.drawing():
                self._draw_evaluation(pl_module, phase, picture_step)
        else:
            self._skipped_step = picture_step
        self.flush()

    def draw_final(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw_evaluation(pl_module, "val", self._skipped_step)

    def _draw_evaluation(self, pl_module: pl.LightningModule, phase: str, step: int) -> None:
        """Confusion-matrix figures and per-class bars of the module's latest evaluation."""
        task = segmentation_module(pl_module)
        confusion = task.last_confusion
        labels = list(task.class_labels)
        if confusion is not None:
            labels = labels or [str(i) for i in range(len(confusion))]
            for normalize, name in ((False, "confusion"), (True, "confusion_normalized")):
                fig = figures.confusion_matrix_figure(confusion, labels, normalize=normalize)
                self.figure(f"{name}_{phase}", fig, step, phase)
        report = task.last_report
        if report is not None and labels:
            self.figure(f"per_class_{phase}", figures.per_class_bars(report, labels), step, phase)

    def _append_row(
        self, phase: str, step: int, values: Mapping[str, Any], epoch: int | None = None
    ) -> None:
        row: dict[str, Any] = {"phase": phase, "step": step}
        if epoch is not None:
            row["epoch"] = epoch
        row["time"] = round(time.time(), 3)
        # NaN/inf as null, as in the history file: the lines stay strict JSON for any reader.
        row.update({k: None if _non_finite(v) else v for k, v in values.items()})
        line = json.dumps(row, allow_nan=False).encode("utf-8") + b"\n"
        handle = self._scalars_handle()
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
        self._closed = False

    def _scalars_handle(self) -> IO[bytes]:
        """The scalars file opened for appending, after ending any line torn by a crash."""
        if self._scalars is None:
            path = self.folder.scalars
            path.parent.mkdir(parents=True, exist_ok=True)
            torn = _last_byte(path) not in (b"", b"\n")
            self._scalars = open(path, "ab")  # noqa: SIM115 (kept open across calls)
            if torn:
                self._scalars.write(b"\n")
        return self._scalars

    def _array_path(self, name: str) -> Path:
        return self.folder.arrays / f"{name}.npz"

    def _load_array(self, name: str) -> list[tuple[int, np.ndarray]]:
        """The entries an earlier (interrupted) run of this folder saved, if any."""
        path = self._array_path(name)
        if not path.exists():
            return []
        with np.load(path) as saved:
            return [(int(s), v) for s, v in zip(saved["steps"], saved["values"], strict=True)]


def _replaced_by(old: dict[str, Any], new: dict[str, Any], step: int) -> bool:
    """Whether ``new`` (logged at ``step``) supersedes ``old``, a row an interrupted run wrote."""
    if old["phase"] != new["phase"]:
        return False
    old_step = old.get("step") or 0
    if old_step != step:
        return old_step > step
    return bool((old.keys() & new.keys()) - _ROW_FIELDS)


#: Keys of a scalars row that are not scalars.
_ROW_FIELDS = frozenset({"phase", "step", "epoch", "time"})


def _last_byte(path: Path) -> bytes:
    if not path.exists() or path.stat().st_size == 0:
        return b""
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _to_number(value: Any) -> float | int:
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"scalars must be numbers, got {type(value).__name__}")
    return value


def _phase_metrics(metrics: Mapping[str, Any], phase: str) -> dict[str, float | int]:
    """``{"val_loss": t}`` -> ``{"loss": float}``; Lightning's per-step values are skipped."""
    values: dict[str, float | int] = {}
    for key, value in metrics.items():
        if not key.startswith(f"{phase}_") or key.endswith("_step"):
            continue
        values[split_metric(key)[1]] = _to_number(value)
    return values
