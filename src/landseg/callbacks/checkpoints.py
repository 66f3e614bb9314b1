"""Checkpoint callbacks: top-k by val_loss and val_miou, step checkpoints, ``last``, epoch files.

Every name comes from :class:`~landseg.runs.checkpoints.CheckpointName`, which also reads them
back; which file is best, latest or stale is :mod:`landseg.runs.checkpoints`'s to say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from landseg.runs.checkpoints import CheckpointKind, CheckpointName


class MovableCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose bookkeeping follows its run folder when the folder moves.

    Lightning keeps the top-k files, ``best`` and ``last`` only when the checkpoint's saved
    folder is this one; a run continued after ``landseg archive`` renamed it, or from a copy,
    wrote ``last-v1`` beside ``last`` and never pruned its earlier top-k files. The saved
    paths below the old folder are taken to the same names below the new one.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath:
            state_dict = _moved(state_dict, Path(saved), str(self.dirpath))
        super().load_state_dict(state_dict)


def _moved(state: dict[str, Any], old: Path, new: str) -> dict[str, Any]:
    def move(path: Any) -> Any:
        if not path:
            return path
        try:
            return str(Path(new) / Path(path).relative_to(old))
        except ValueError:  # not below the old folder: left as it was
            return path

    moved = {**state, "dirpath": new}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        moved[key] = move(state.get(key))
    moved["best_k_models"] = {move(k): v for k, v in (state.get("best_k_models") or {}).items()}
    return moved


class StepCheckpoint(MovableCheckpoint):
    """Checkpoints every N training steps, except on a step that a validation follows.

    A checkpoint taken there would resume past the validation without running it; the
    validation's own checkpoints (top-k, last) follow within moments anyway.
    """

    def __init__(self, dirpath: Path, base: str, every_n_train_steps: int):
        super().__init__(
            dirpath=dirpath,
            filename=CheckpointName.template(base, "step"),
            every_n_train_steps=every_n_train_steps,
            save_top_k=1,
            monitor="step",
            mode="max",
            auto_insert_metric_name=False,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        batch_idx = kwargs.get("batch_idx", args[-1] if args else 0)
        done = batch_idx + 1
        val_every = trainer.val_check_batch
        if done >= trainer.num_training_batches or (
            isinstance(val_every, int) and done % val_every == 0
        ):
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)


class LastCheckpoint(MovableCheckpoint):
    """Writes ``<name>-last`` after every validation (or epoch, without one).

    Lightning's own ``save_last`` writes ``last`` only at a step where the same callback
    also saved a top-k file, which a callback that keeps no top-k never does. Add it after
    every other checkpoint callback: it then records their bookkeeping for the same
    validation, so a run resumed from it keeps the right top-k files.
    """

    def __init__(self, dirpath: Path, base: str):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True)
        self.CHECKPOINT_NAME_LAST = CheckpointName.template(base, "last")

    def _save_last_now(self, trainer: pl.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)


class EpochCheckpoint(MovableCheckpoint):
    """``<base>-epoch=NNN`` every n epochs and after the last epoch (cross-validation tasks)."""

    def __init__(self, dirpath: Path, base: str, every_n_epochs: int):
        super().__init__(
            dirpath=dirpath,
            filename=CheckpointName.template(base, "epoch"),
            every_n_epochs=every_n_epochs,
            save_top_k=-1,
            save_on_train_epoch_end=True,
            auto_insert_metric_name=False,
        )
        self.period = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        epoch = trainer.current_epoch
        last = trainer.should_stop or epoch + 1 >= (trainer.max_epochs or 0)
        if last and (epoch + 1) % self.period:  # not saved by the period above
            metrics: dict[str, Any] = {"epoch": epoch}
            trainer.save_checkpoint(self.format_checkpoint_name(metrics), weights_only=False)


def top_k_checkpoints(dirpath: Path, base: str, k: int) -> list[ModelCheckpoint]:
    """The ``k`` best by lowest val_loss and the ``k`` best by highest val_miou (none for 0).

    They hold the weights, the config and what predict, evaluate and report read (the
    hyper-parameters, epoch and step), not the optimiser's state: a run continues from
    ``last`` or a step checkpoint only, and Adam's state doubles a checkpoint's size.
    """
    if k <= 0:
        return []
    kinds: tuple[tuple[CheckpointKind, str, str], ...] = (
        ("loss", "val_loss", "min"),
        ("miou", "val_miou", "max"),
    )
    return [
        MovableCheckpoint(
            dirpath=dirpath,
            filename=CheckpointName.template(base, kind),
            monitor=monitor,
            mode=mode,
            save_top_k=k,
            save_weights_only=True,
            auto_insert_metric_name=False,
        )
        for kind, monitor, mode in kinds
    ]
