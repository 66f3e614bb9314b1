"""The model itself in TensorBoard: weight histograms per epoch and the graph once.

TensorBoard builds both its "Distributions" and "Histograms" dashboards from the histograms.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from landseg.callbacks.cadence import DrawsOnCadence
from landseg.callbacks.images import model_input
from landseg.loggers.tensorboard import find_phase_logger, logger_step
from landseg.tasks.interface import segmentation_module

log = logging.getLogger(__name__)


class WeightHistograms(DrawsOnCadence):
    """Histograms of every parameter in the train run, after the train epochs of ``cadence``.

    Every epoch by default; the final weights at fit end if the last epoch was skipped. Tags
    follow the module tree (``encoder/layer1/0/conv1/weight``) so TensorBoard groups them by
    top-level block. Non-finite values (a diverged run) are left out rather than failing.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.should_draw(trainer):
            with self.drawing():
                self.draw_final(trainer, pl_module)

    def draw_final(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Histograms of the weights as they are now (the final ones at fit end)."""
        tb = find_phase_logger(trainer)
        if tb is None:
            return
        writer = tb.writer("train")
        for name, parameter in segmentation_module(pl_module).model.named_parameters():
            # numpy, where the writer computes the histogram anyway: torch's isfinite and a
            # boolean mask over every weight took seconds a drawing (14 M for a resnet18
            # U-Net), numpy's isfinite a tenth; masking only when some value is not finite
            values = parameter.detach().float().flatten().cpu().numpy()
            finite = np.isfinite(values)
            if not finite.all():
                values = values[finite]
            if values.size:
                writer.add_histogram(name.replace(".", "/"), values, logger_step(trainer))


class ModelGraph(Callback):
    """Adds the network's graph to the train run once, when fit starts.

    The example input is a ``(1, in_channels, patch_size, patch_size)`` zero tensor. A model
    that cannot be traced only produces a warning: the graph is never worth a failed
    training.
    """

    def __init__(self, patch_size: int = 64):
        self.patch_size = patch_size
        self._done = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._done or not trainer.is_global_zero:
            return
        tb = find_phase_logger(trainer)
        if tb is None:
            return
        self._done = True
        task = segmentation_module(pl_module)
        model = task.model
        if getattr(model, "_compiled_call_impl", None) is not None:
            return  # train_setup.compile: a compiled call cannot be traced into a graph
        example = torch.zeros(1, task.in_channels, self.patch_size, self.patch_size)
        tb.log_graph(model, model_input(model, example))
