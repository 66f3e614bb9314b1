"""ODEON's ``.pth`` outputs: model, optimiser and training-state files, kept at the best val_loss.

With ``model_out_ext: .pth`` ODEON's train tool writes ``<name>.pth`` (model state_dict),
``optimizer_<name>.pth`` (optimiser state_dict) and ``train_<name>.pth`` (epoch, step, loss,
learning rate), overwritten when the model improves; their names are
:class:`landseg.runs.checkpoints.PthFiles`'s. All three load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from landseg.runs.checkpoints import PthFiles, save_checkpoint
from landseg.tasks.interface import segmentation_module


class PthExport(Callback):
    def __init__(self, dirpath: Path, name: str):
        self.files = PthFiles(dirpath, name)
        self.best = math.inf

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or loss is None or float(loss) >= self.best:
            return
        self.best = float(loss)
        if not trainer.is_global_zero:
            return
        network = segmentation_module(pl_module).model
        save_checkpoint(network.state_dict(), self.files.model)
        save_checkpoint(trainer.optimizers[0].state_dict(), self.files.optimizer)
        info = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "val_loss": self.best,
            "learning_rate": trainer.optimizers[0].param_groups[0]["lr"],
        }
        save_checkpoint(info, self.files.train_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best", math.inf)
