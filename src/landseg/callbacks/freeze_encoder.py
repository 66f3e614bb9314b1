"""``train_setup.freeze_encoder_epochs``: the encoder frozen for the first epochs of a run.

Frozen means two things, both needed for a frozen encoder to come out of those epochs exactly
as it went in: its parameters take no gradient (``requires_grad`` off; every optimiser landseg
offers skips a parameter without one, weight decay and momentum included), and its
normalisation layers run in eval mode, so that their running statistics do not move (a
BatchNorm in train mode updates them at every forward pass, gradient or not).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from landseg.tasks.finetune import encoder_of

#: Normalisation layers without running statistics: eval mode changes nothing in them, but a
#: frozen encoder keeps every normalisation layer in eval mode, whatever it holds.
_OTHER_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def normalisation_layers(module: nn.Module) -> list[nn.Module]:
    """The normalisation layers in ``module``: torch's BatchNorm and InstanceNorm kinds
    (``_NormBase``, SyncBatchNorm and timm's BatchNormAct included), GroupNorm, LayerNorm, and
    any other layer holding running statistics."""
    return [
        m
        for m in module.modules()
        if isinstance(m, (_NormBase, *_OTHER_NORMS))
        or isinstance(getattr(m, "running_mean", None), torch.Tensor)
    ]


class FreezeEncoder(Callback):
    """Keeps ``pl_module.model.encoder`` frozen while ``current_epoch < epochs``, and trains it
    from epoch ``epochs`` on (``epochs`` may exceed the run's: frozen throughout).

    Applied at each training epoch's start and again at each training batch's: Lightning puts
    each module back in the mode it had before a validation (its ``_ModuleMode``), but other
    code between two batches may call ``train()`` on the whole network, and a frozen
    normalisation layer must never see a training batch in train mode.

    No resumable state: whether the encoder is frozen is a function of the current epoch
    alone, and a network rebuilt from a checkpoint starts trainable, so a run continued in
    or after its frozen epochs (killed across the boundary too) is frozen exactly when the
    uninterrupted run was. The optimiser state it continues with has no entries for frozen
    parameters, as the uninterrupted run's had none.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        #: the parameters this process froze (given their gradient back at the boundary)
        self._frozen: list[nn.Parameter] = []
        self._norms: list[nn.Module] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer.current_epoch, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._apply(trainer.current_epoch, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A network frozen to the end of the run is left trainable, as it was given."""
        self._unfreeze(pl_module)

    def frozen(self) -> bool:
        """Whether this process holds the encoder frozen now."""
        return bool(self._frozen or self._norms)

    def _apply(self, epoch: int, pl_module: pl.LightningModule) -> None:
        if epoch >= self.epochs:
            self._unfreeze(pl_module)
            return
        encoder = encoder_of(getattr(pl_module, "model", pl_module))
        if not self.frozen():
            self._frozen = [p for p in encoder.parameters() if p.requires_grad]
            for parameter in self._frozen:
                parameter.requires_grad_(False)
            self._norms = normalisation_layers(encoder)
        for layer in self._norms:
            layer.eval()

    def _unfreeze(self, pl_module: pl.LightningModule) -> None:
        if not self.frozen():
            return
        for parameter in self._frozen:
            parameter.requires_grad_(True)
        for layer in self._norms:
            layer.train(pl_module.training)
        self._frozen, self._norms = [], []
