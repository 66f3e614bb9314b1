"""What a run prints on the console: its progress, and none of the libraries' known noise.

At a terminal (stderr is a tty) a run shows Lightning's rich progress bar. Anywhere else (a
batch job's log file, a pipe, a cluster's output file) a bar is carriage returns and cursor
escapes, so :class:`PlainProgressBar` writes plain lines instead: epoch, step/total, train
loss, validation metrics once known, throughput and the time left for the epoch, at most one
line every ``interval_s`` seconds (30 by default) and one at the end of each epoch.
``output_setup.progress: 0`` turns both off.

:func:`quiet_known_noise` drops the messages torch, Lightning and rasterio print for every run
(and so for every cross-validation task) that tell a landseg user nothing: they are listed in
:data:`NOISE_WARNINGS` and :data:`NOISE_LOG_RECORDS`, the one place to add another.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress import ProgressBar, RichProgressBar

# ---------------------------------------------------------------------------- known noise

#: (message regex, category) of warnings that every run would print: a deprecation inside
#: Lightning's own code; Lightning's ModelCheckpoint on a run folder that landseg resumes on
#: purpose; rasterio on rasters without georeferencing (tiles may have none); torch's
#: deprecation of the TorchScript export that ``export_checkpoint: torchscript`` asks for;
#: torch's notice on ``weights_only`` (landseg loads every checkpoint with
#: ``weights_only=True``: the notice is about loads inside Lightning that landseg's own
#: checks have already made safe).
NOISE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"You are using `torch\.load` with `weights_only=False`", FutureWarning),
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
    (r"Dataset has no geotransform, gcps, or rpcs", UserWarning),  # NotGeoreferencedWarning
    (r"The given matrix is equal to Affine\.identity", UserWarning),  # NotGeoreferencedWarning
    (r"`torch\.jit\.\w+` is (deprecated|not supported)", Warning),  # Future/DeprecationWarning
)

#: logger name -> texts of its records that are dropped: Lightning's advertisement, its note on
#: landseg's default ``val_check_interval: 1.0``, the GPUs and TPUs a machine does not have,
#: the precision landseg already names (its own line says why), its notes on the
#: checkpoints it restores, which landseg names itself ("resuming from ..."), and its note that
#: fit reached max_epochs, which the last epoch line ("epoch N/N") already says.
_LIGHTNING_NOISE = (
    "litlogger",
    "was configured so validation will run at the end of",
    "TPU available: False",
    "GPU available: False, used: False",
    "Automatic Mixed Precision (AMP)",
    "Restoring states from the checkpoint path at ",
    "Restored all states from the checkpoint at ",
    "Loaded model weights from the checkpoint at ",
    "`Trainer.fit` stopped: `max_epochs=",
)
NOISE_LOG_RECORDS: Mapping[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": _LIGHTNING_NOISE,
    "lightning.fabric.utilities.rank_zero": _LIGHTNING_NOISE,
}


class DropRecords(logging.Filter):
    """Drops the log records whose message contains one of ``texts``."""

    def __init__(self, texts: tuple[str, ...]):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def quiet_known_noise() -> None:
    """Ignore the known noise in this process (idempotent: a second call adds nothing).

    Called once per process that trains: ``landseg train`` and every cross-validation task
    (sequential, ``--workers`` processes, MPI ranks).
    """
    for message, category in NOISE_WARNINGS:
        # filterwarnings replaces an identical filter, so repeated calls add none
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, texts in NOISE_LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropRecords) for f in logger.filters):
            logger.addFilter(DropRecords(texts))


# ---------------------------------------------------------------------------- progress

#: Seconds between two plain progress lines (output that is not a terminal): training's, and
#: every other command's with a progress display (predict, evaluate).
PLAIN_INTERVAL_S = 30.0


def progress_bar(
    refresh_rate: int, label: str | None = None, stream: TextIO | None = None
) -> ProgressBar | None:
    """The run's progress display: None when ``refresh_rate`` is 0 (``output_setup.progress``).

    At a terminal, Lightning's rich bar on stderr (it refreshes itself); otherwise plain lines,
    each starting with ``[label]`` (the run folder's name: the task of a cross-validation job,
    whose workers write to the same log).
    """
    if refresh_rate <= 0:
        return None
    target = stream if stream is not None else sys.stderr
    if is_terminal(target):
        return RichProgressBar(console_kwargs={"stderr": True})
    return PlainProgressBar(label=label, stream=stream)


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a live bar), not a file or a pipe (plain lines)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``h:mm:ss``."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def batch_size(batch: Any) -> int | None:
    """Samples in a batch: the first dimension of its first tensor (None if it has none)."""
    if hasattr(batch, "shape") and len(batch.shape) > 0:
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = batch_size(item)
            if size is not None:
                return size
    return None


def _format_value(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return f"{value:.4g}"


class PlainProgressBar(ProgressBar):
    """Progress as plain lines, for output that is not a terminal (log files, pipes).

    A line: ``[label] epoch 3/12 step 120/400 train_loss=0.4123 val_loss=0.5012 val_miou=0.6123
    | 85.2 samples/s | epoch left 0:03:17``. Validation, test and prediction get a line of
    their own only when they last longer than ``interval_s``. ``clock`` is for tests.
    """

    def __init__(
        self,
        interval_s: float = PLAIN_INTERVAL_S,
        label: str | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.interval_s = interval_s
        self._stream = stream
        self._prefix = f"[{label}] " if label else ""
        self._clock = clock
        self._enabled = True
        self._last_line = clock()
        self._epoch: int | None = None
        self._epoch_start = 0.0
        self._batches = 0  # trained in this epoch, by this process (a resume starts midway)
        self._step = 0  # the epoch's batches done, those before a resume included
        self._trained_until = 0.0  # the end of the epoch's latest training batch
        self._samples = 0
        self._sized = True  # every batch so far had a known size
        self._stage_start = 0.0

    # -- Lightning's interface

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            kwargs.setdefault("file", self.stream)
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    @property
    def stream(self) -> TextIO:
        """The stream given, else whatever ``sys.stderr`` is now."""
        return self._stream if self._stream is not None else sys.stderr

    # -- training

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_line = self._clock()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_epoch(trainer.current_epoch)

    def _start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._epoch_start = self._clock()
        self._batches = self._samples = self._step = 0
        self._trained_until = self._epoch_start
        self._sized = True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._epoch != trainer.current_epoch:  # resumed mid-epoch: no epoch start seen
            self._start_epoch(trainer.current_epoch)
        self._batches += 1
        self._step = batch_idx + 1
        self._trained_until = self._clock()
        size = batch_size(batch)
        if size is None:
            self._sized = False
        else:
            self._samples += size
        total = self.total_train_batches
        if batch_idx + 1 < total and self._due():
            self._train_line(trainer, pl_module, batch_idx + 1, end=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_line(trainer, pl_module, self._step, end=True)

    def _train_line(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, *, end: bool
    ) -> None:
        now = self._clock()
        elapsed = max(now - self._epoch_start, 1e-9)
        training = max(self._trained_until - self._epoch_start, 1e-9)  # no validation
        epochs = trainer.max_epochs
        epoch = f"epoch {trainer.current_epoch + 1}" + (
            f"/{epochs}" if epochs is not None and epochs > 0 else ""
        )
        total = self.total_train_batches
        parts = [f"{epoch} step {step}/{_count(total)}"]
        metrics = self.metrics_text(self.get_metrics(trainer, pl_module), end=end)
        if metrics:
            parts[0] += " " + metrics
        if self._batches:
            if self._sized and self._samples:
                parts.append(f"{self._samples / training:.1f} samples/s")
            else:
                parts.append(f"{self._batches / training:.2f} it/s")
        if end:
            parts.append(f"epoch time {format_duration(elapsed)}")
        elif self._batches and math.isfinite(total):
            left = training / self._batches * max(total - step, 0)
            parts.append(f"epoch left {format_duration(left)}")
        self._write(" | ".join(parts), now)

    @staticmethod
    def metrics_text(metrics: Mapping[str, Any], *, end: bool) -> str:
        """``name=value`` of the progress-bar metrics, one value per name.

        A metric logged per step and per epoch (``train_loss_step``, ``train_loss_epoch``)
        shows as ``train_loss``: the step value during the epoch, the epoch's at its end.
        """
        shown: dict[str, str] = {}
        for key, value in metrics.items():
            text = _format_value(value)
            if key == "v_num" or text is None:
                continue
            name = key
            for suffix, preferred in (("_step", not end), ("_epoch", end)):
                if key.endswith(suffix):
                    name = key.removesuffix(suffix)
                    other = name + ("_epoch" if suffix == "_step" else "_step")
                    if not preferred and other in metrics:
                        text = None
            if text is not None:
                shown[name] = text
        order = sorted(shown, key=lambda name: not name.startswith("train"))  # train first
        return " ".join(f"{name}={shown[name]}" for name in order)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The test scores as one plain line, as an epoch's (Lightning's boxed table is for
        a terminal)."""
        scores = {
            key: value.item() if hasattr(value, "item") else value
            for key, value in trainer.callback_metrics.items()
            if key.startswith("test")
        }
        text = self.metrics_text(scores, end=True)
        if text:
            self._write(f"test {text}", self._clock())

    # -- validation, test, prediction: only lines for long ones

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage_start = self._clock()

    on_test_start = on_validation_start
    on_predict_start = on_validation_start

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self.has_dataloader_changed(dataloader_idx)
            self._eval_line("validation", batch_idx, self.total_val_batches_current_dataloader)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_line("test", batch_idx, self.total_test_batches_current_dataloader)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.has_dataloader_changed(dataloader_idx)
        self._eval_line("prediction", batch_idx, self.total_predict_batches_current_dataloader)

    def _eval_line(self, stage: str, batch_idx: int, total: float) -> None:
        step = batch_idx + 1
        if step >= total or not self._due():
            return
        now = self._clock()
        elapsed = max(now - self._stage_start, 1e-9)
        parts = [f"{stage} step {step}/{_count(total)}", f"{step / elapsed:.2f} it/s"]
        if math.isfinite(total):
            parts.append(f"left {format_duration(elapsed / step * (total - step))}")
        self._write(" | ".join(parts), now)

    # -- output

    def _due(self) -> bool:
        return self._enabled and self._clock() - self._last_line >= self.interval_s

    def _write(self, line: str, now: float) -> None:
        if self._enabled:
            self._last_line = now
            self.print(self._prefix + line)


def _count(total: float) -> str:
    return str(int(total)) if math.isfinite(total) else "?"
