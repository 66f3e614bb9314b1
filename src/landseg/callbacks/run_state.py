"""Keeps ``run.json`` current: epochs done and best metrics, after every validation."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from landseg.runs.folder import RunFolder


class RunStateUpdater(Callback):
    def __init__(self, run: RunFolder):
        self.run = run

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics  # every rank: the read syncs metrics under DDP
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        loss, miou = metrics.get("val_loss"), metrics.get("val_miou")
        self.run.record_validation(
            trainer.current_epoch + 1,
            float(loss) if loss is not None else None,
            float(miou) if miou is not None else None,
        )
