"""The history JSON of ODEON's train tool: per epoch id, the metrics, the loss and the learning
rate.

Written atomically by rank 0 after every validation (before the checkpoints of that
validation, since Lightning runs checkpoint callbacks last). On resume, entries the restored
checkpoint does not cover are dropped and recomputed, so every epoch appears exactly once.
With several validations per epoch (val_check_interval < 1), the last one of an epoch wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from landseg.core.files import atomic_write_json
from landseg.tasks.interface import segmentation_module


def read_history(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _learning_rate(trainer: pl.Trainer) -> float | None:
    if not trainer.optimizers:
        return None
    return float(trainer.optimizers[0].param_groups[0]["lr"])


class HistoryWriter(Callback):
    def __init__(self, val_path: Path, test_path: Path):
        self.val_path = val_path
        self.test_path = test_path
        self.history: dict[str, dict[str, Any]] = {}
        self.epoch_lr: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the rate the epoch trains with: epoch schedulers step before the end-of-epoch
        # validation, so reading it there would give the next epoch's
        self.epoch_lr = _learning_rate(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # loops are restored by now: drop what the restored checkpoint does not cover
        kept = {
            k: v for k, v in read_history(self.val_path).items() if int(k) < trainer.current_epoch
        }
        self.history = kept
        if trainer.is_global_zero and self.val_path.exists():
            atomic_write_json(self.val_path, self.history)

    def _entry(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict:
        report = dict(segmentation_module(pl_module).last_report or {})
        loss = trainer.callback_metrics.get(f"{stage}_loss")
        report["loss"] = float(loss) if loss is not None else None
        epoch_lr = self.epoch_lr if self.epoch_lr is not None else _learning_rate(trainer)
        report["learning rate"] = epoch_lr if stage == "val" else _learning_rate(trainer)
        report["step"] = trainer.global_step
        return report

    def state_dict(self) -> dict[str, Any]:
        # a run resumed mid-epoch gets no on_train_epoch_start for that epoch
        return {"epoch_lr": self.epoch_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_lr = state_dict.get("epoch_lr")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics  # noqa: B018  (every rank: the read syncs metrics under DDP)
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.history[str(trainer.current_epoch)] = self._entry(trainer, pl_module, "val")
        atomic_write_json(self.val_path, self.history)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        entry = self._entry(trainer, pl_module, "test")
        entry["checkpoint"] = Path(trainer.ckpt_path).name if trainer.ckpt_path else None
        atomic_write_json(self.test_path, {str(trainer.current_epoch): entry})
