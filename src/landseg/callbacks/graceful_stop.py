"""Stop a run cleanly on Ctrl-C (SIGINT), SIGTERM or SIGUSR1: at a step boundary, resumable.

The signal handler only records the signal. The run then stops at the next point where a
checkpoint holds its whole state:

- after the current optimiser step, with a step checkpoint (``<base>-step=NNNNNNN``: weights,
  optimiser, loader position, random and metric states), when no validation follows that
  step;
- otherwise after the validation that follows and its checkpoints (``last`` and top-k), which
  Lightning writes after the validation, or at the end of the train epoch when there is one
  validation per epoch (or none).

It then raises :class:`StopRequested`, which the run lifecycle turns into an ``interrupted``
run and the command line into exit code 128 + the signal (130 for SIGINT, 143 for SIGTERM,
138 for SIGUSR1; ``device_setup.stop_signals`` chooses SIGTERM and SIGUSR1).
Lightning would otherwise catch the KeyboardInterrupt itself and exit with code 1. A second
SIGINT stops at once (a KeyboardInterrupt), for a person who does not want to wait.

This is a :class:`~lightning.pytorch.callbacks.Checkpoint` so that Lightning runs its hooks
after every other callback's, checkpoint callbacks included (add it last): what it saves, or
what it stops after, includes their state for the same step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from landseg.core.errors import StopRequested
from landseg.core.signals import StopSignals
from landseg.runs.checkpoints import CheckpointFolder

__all__ = ["GracefulStop", "StopRequested", "StopSignals", "validation_follows"]


def validation_follows(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether a validation (or the end of the epoch) comes right after this training batch."""
    done = batch_idx + 1
    val_every = trainer.val_check_batch
    return done >= trainer.num_training_batches or (
        isinstance(val_every, int) and done % val_every == 0
    )


def _checkpoints_wait_for_epoch_end(trainer: pl.Trainer) -> bool:
    """Whether the checkpoints of this validation are written at the train epoch's end.

    Lightning's ModelCheckpoint saves at the end of the train epoch, not after the validation,
    when there is one validation per epoch; asked of the run's ``last`` checkpoint callback.
    """
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            return bool(callback._should_save_on_train_epoch_end(trainer))
    return False


class GracefulStop(Checkpoint):
    """Turns stop signals into a stop at a resumable point (see the module docstring).

    Args:
        dirpath: the run's checkpoint folder.
        base: the checkpoints' base name.
        signals: the run's :class:`StopSignals`; without one, the callback installs its own
            (SIGINT and SIGTERM) for the duration of fit.
    """

    def __init__(self, dirpath: Path, base: str, signals: StopSignals | None = None):
        self.dirpath = Path(dirpath)
        self.base = base
        self.owns_signals = signals is None
        self.signals = signals or StopSignals()

    @property
    def requested(self) -> int | None:
        return self.signals.requested

    def agreed(self, trainer: pl.Trainer) -> int | None:
        """The stop signal, once any rank has one; the same answer on every rank.

        A signal may reach one rank only (``kill`` of one process) or the ranks at different
        steps (SLURM signals every process, not at the same instant); the ranks must still
        stop after the same step, or the one still training waits forever in its next
        gradient all-reduce. One all-reduce (max) of the signal number per check when there
        are several processes; nothing more for one.
        """
        if trainer.world_size <= 1:
            return self.requested
        import torch

        mine = torch.tensor(float(self.requested or 0), device=trainer.strategy.root_device)
        agreed = int(trainer.strategy.reduce(mine, reduce_op="max").item())
        return agreed or None

    # ------------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals.install()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    def _release(self) -> None:
        if self.owns_signals:
            self.signals.restore()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if validation_follows(trainer, batch_idx):
            return
        signum = self.agreed(trainer)
        if signum is None:
            return
        path = CheckpointFolder(self.dirpath).file(self.base, "step", step=trainer.global_step)
        # a whole checkpoint, said so: Lightning otherwise logs that it defaulted to one
        trainer.save_checkpoint(path, weights_only=False)  # every rank calls it; rank 0 writes
        raise StopRequested(signum, trainer.global_step, path)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _checkpoints_wait_for_epoch_end(trainer):
            self._stop_after_checkpoints(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_after_checkpoints(trainer)

    def _stop_after_checkpoints(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking:
            return
        signum = self.agreed(trainer)
        if signum is not None:
            raise StopRequested(signum, trainer.global_step)
