"""Stop a run cleanly on Ctrl-C (SIGINT) or SIGTERM: at a step boundary, resumable, no loss.

The signal handler only records the signal. The run then stops at the next point where a
checkpoint holds its whole state:

- after the current optimiser step, with a step checkpoint (``<base>-step=NNNNNNN``: weights,
  optimiser, loader position, random and metric states), when no validation follows that
  step;
- otherwise after the validation that follows and its checkpoints (``last`` and top-k), or at
  the end of the train epoch when there is no validation.

It then raises :class:`StopRequested`, which the run lifecycle turns into an ``interrupted``
run and the command line into exit code 128 + the signal (130 for SIGINT, 143 for SIGTERM).
Lightning would otherwise catch the KeyboardInterrupt itself and exit with code 1. A second
SIGINT stops at once (a KeyboardInterrupt), for a person who does not want to wait.

This is a :class:`~lightning.pytorch.callbacks.Checkpoint` so that Lightning runs its hooks
after every other callback's, checkpoint callbacks included (add it last): what it saves, or
what it stops after, includes their state for the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

from landseg.runs.folder import CheckpointName


class StopRequested(Exception):
    """A stop signal ended the run at a resumable point (``checkpoint``, when one was written).

    Not a KeyboardInterrupt: Lightning turns those into ``sys.exit(1)``.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None = None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def validation_follows(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether a validation (or the end of the epoch) comes right after this training batch."""
    done = batch_idx + 1
    val_every = trainer.val_check_batch
    return done >= trainer.num_training_batches or (
        isinstance(val_every, int) and done % val_every == 0
    )


class GracefulStop(Checkpoint):
    """Turns stop signals into a stop at a resumable point (see the module docstring).

    Args:
        dirpath: the run's checkpoint folder.
        base: the checkpoints' base name.
        signals: the signals handled (SIGINT and SIGTERM by default).
    """

    def __init__(
        self,
        dirpath: Path,
        base: str,
        signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
    ):
        self.dirpath = Path(dirpath)
        self.base = base
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ signals

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.requested = signum

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are delivered to the main thread only
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # ------------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = None
        self._install()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.requested is None or validation_follows(trainer, batch_idx):
            return
        path = self.dirpath / f"{CheckpointName.template(self.base, 'step')}.ckpt"
        path = Path(str(path).format(step=trainer.global_step))
        trainer.save_checkpoint(path)
        raise StopRequested(self.requested, trainer.global_step, path)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_after_checkpoints(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_after_checkpoints(trainer)

    def _stop_after_checkpoints(self, trainer: pl.Trainer) -> None:
        if self.requested is not None and not trainer.sanity_checking:
            raise StopRequested(self.requested, trainer.global_step)
