"""Losses by name (ODEON's train tool: ce, bce, focal, combo; landseg adds dice, jaccard).

Every loss takes logits (B, C, H, W) and int64 class indices (B, H, W) where ``IGNORE_INDEX``
(-1) marks pixels without a class; those never contribute, so a loss computed on a tile with
ignored pixels equals the loss on the labelled pixels alone. Registry ``info`` says whether a
loss can use ``class_imbalance``, so configs are checked before training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from landseg.core.errors import ConfigError
from landseg.core.registry import Registry, unknown_name_message
from landseg.data.summary import IGNORE_INDEX

LossFactory = Callable[[int, Sequence[float] | None], nn.Module]

LOSSES: Registry[LossFactory] = Registry("loss")


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * v) / sum(w), and 0 (not NaN) when every weight is 0 (no labelled pixel)."""
    weights = weights.to(values.dtype)
    total = weights.sum().clamp_min(torch.finfo(values.dtype).tiny)
    return (values * weights).sum() / total


class CrossEntropyLoss(nn.Module):
    """Cross-entropy over labelled pixels, with optional class weights and focal term.

    Equals ``nn.CrossEntropyLoss(weight, ignore_index=-1)`` (a mean weighted by the pixels'
    class weights) but returns 0 instead of NaN when no labelled pixel has a non-zero weight.
    With ``gamma > 0`` each pixel's term is scaled by ``(1 - p_t) ** gamma``: the softmax focal
    loss of Lin et al. (2017), the class weights playing the role of alpha.
    """

    def __init__(
        self, n_classes: int, class_weights: Sequence[float] | None = None, gamma: float = 0.0
    ):
        super().__init__()
        weights = torch.ones(n_classes) if class_weights is None else torch.tensor(class_weights)
        if weights.shape != (n_classes,):
            raise ValueError(f"expected {n_classes} class weights, got {len(weights)}")
        # not persistent: the weights come from the config, they need not be in checkpoints
        self.register_buffer("class_weights", weights.float(), persistent=False)
        self.gamma = gamma
        self._plain = class_weights is None and not gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._plain:  # the common case, fused: half the time of the weighted form on a CPU
            total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
            return total / (target != IGNORE_INDEX).sum().clamp_min(1)
        nll = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
        if self.gamma:
            nll = (-torch.expm1(-nll)).pow(self.gamma) * nll  # (1 - p_t)^gamma * -log(p_t)
        valid = target != IGNORE_INDEX
        class_weights = cast("torch.Tensor", self.class_weights)
        pixel_weights = class_weights[target.clamp_min(0)] * valid
        return weighted_mean(nll, pixel_weights)


class FocalLoss(CrossEntropyLoss):
    """Softmax focal loss, gamma 2 as in the paper; ``class_weights`` are its alpha."""

    def __init__(
        self, n_classes: int, class_weights: Sequence[float] | None = None, gamma: float = 2.0
    ):
        super().__init__(n_classes, class_weights, gamma)


class BCELoss(nn.Module):
    """BCE with logits against the one-hot target: one sigmoid per class, as ODEON's ``bce``.

    The mean runs over the labelled pixels (and the classes) only.
    """

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE_INDEX
        one_hot = F.one_hot(target.clamp_min(0), self.n_classes).permute(0, 3, 1, 2)
        per_class = F.binary_cross_entropy_with_logits(
            logits, one_hot.to(logits.dtype), reduction="none"
        )
        return weighted_mean(per_class.mean(dim=1), valid)


def jaccard_loss(n_classes: int) -> nn.Module:
    """Soft multi-class Jaccard (IoU) loss on softmax probabilities, classes averaged.

    smp zeroes both probabilities and one-hot targets at ignored pixels before one-hot
    encoding (checked in smp 0.6), so ``ignore_index=-1`` is safe. Classes absent from the
    batch's labels contribute 0.
    """
    from segmentation_models_pytorch.losses import JaccardLoss  # heavy: only when used

    return JaccardLoss(mode="multiclass", ignore_index=IGNORE_INDEX, from_logits=True)


def dice_loss(n_classes: int) -> nn.Module:
    """Soft multi-class Dice loss; ignored pixels handled as in :func:`jaccard_loss`."""
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX, from_logits=True)


class ComboLoss(nn.Module):
    """ODEON's ``combo``: ``0.75 * bce + 0.25 * jaccard``."""

    def __init__(self, n_classes: int, bce_weight: float = 0.75, jaccard_weight: float = 0.25):
        super().__init__()
        self.bce = BCELoss(n_classes)
        self.jaccard = jaccard_loss(n_classes)
        self.bce_weight = bce_weight
        self.jaccard_weight = jaccard_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.jaccard_weight * self.jaccard(
            logits, target
        )


LOSSES.add("ce", CrossEntropyLoss, supports_class_weights=True)
LOSSES.add("focal", FocalLoss, supports_class_weights=True)
LOSSES.add("bce", lambda n_classes, _weights: BCELoss(n_classes), supports_class_weights=False)
LOSSES.add("combo", lambda n_classes, _weights: ComboLoss(n_classes), supports_class_weights=False)
LOSSES.add("dice", lambda n_classes, _weights: dice_loss(n_classes), supports_class_weights=False)
LOSSES.add(
    "jaccard", lambda n_classes, _weights: jaccard_loss(n_classes), supports_class_weights=False
)


def loss_problems(
    name: str, class_weights: Sequence[float] | None, n_classes: int | None
) -> list[str]:
    """Problems with a loss name and its class weights (``n_classes`` None: not known yet).

    The one place these rules are checked: validation reports them, :func:`build_loss` refuses
    them.
    """
    if name not in LOSSES:
        return ["train_setup.loss: " + unknown_name_message("loss", name, LOSSES.names())]
    if class_weights is None:
        return []
    if not LOSSES.info(name).get("supports_class_weights"):
        usable = [n for n in LOSSES.names() if LOSSES.info(n).get("supports_class_weights")]
        return [
            f"train_setup.class_imbalance: loss '{name}' cannot use class weights; "
            f"use one of: {', '.join(usable)}, or remove class_imbalance"
        ]
    problems = []
    if n_classes is not None and len(class_weights) != n_classes:
        problems.append(
            f"train_setup.class_imbalance: {len(class_weights)} weights but there are "
            f"{n_classes} classes"
        )
    if not any(class_weights):
        problems.append("train_setup.class_imbalance: every weight is 0, nothing would be learnt")
    return problems


def build_loss(
    name: str, n_classes: int, class_weights: Sequence[float] | None = None
) -> nn.Module:
    """The named loss; a config the loss cannot honour raises ConfigError, not a silent no-op."""
    problems = loss_problems(name, class_weights, n_classes)
    if problems:
        raise ConfigError(problems)
    return LOSSES.get(name)(n_classes, class_weights)
