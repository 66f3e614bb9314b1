"""Fine-tuning controls: which part of a network is its encoder, and its learning rate.

``train_setup.freeze_encoder_epochs`` and ``train_setup.encoder_lr_factor`` act on the
network's ``encoder`` submodule, the one every segmentation-models-pytorch model has (landseg's
``resnet18``..``resnet152`` and ``deeplab`` are smp models, and so is every
``smp:<Architecture>``). landseg's own ``unet`` and ``lightunet`` have none, and are refused
with either key set. Freezing itself is :class:`landseg.callbacks.freeze_encoder.FreezeEncoder`'s.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from landseg.core.errors import ConfigError

FREEZE_KEY = "train_setup.freeze_encoder_epochs"
FACTOR_KEY = "train_setup.encoder_lr_factor"


def model_has_encoder(model_name: str) -> bool | None:
    """Whether the model ``model_name`` names has an ``encoder`` submodule (None: no such
    model; the model check says so). Read from the model registry, without building it."""
    from landseg.models.registry import MODELS, register_smp_models

    if model_name not in MODELS:
        register_smp_models()  # an smp: name, which imports smp anyway
        if model_name not in MODELS:
            return None
    info = MODELS.info(model_name)
    return bool(info.get("encoder") or info.get("smp"))


def finetune_problems(model_name: str, freeze_epochs: int, lr_factor: float) -> list[str]:
    """The fine-tuning keys set for a model without an encoder, one line each."""
    if freeze_epochs == 0 and lr_factor == 1.0:
        return []
    if model_has_encoder(model_name) is not False:
        return []
    keys = [
        f"{key} {value}"
        for key, value, default in (
            (FREEZE_KEY, freeze_epochs, 0),
            (FACTOR_KEY, lr_factor, 1.0),
        )
        if value != default
    ]
    return [
        f"{line}: model '{model_name}' has no encoder to freeze or to train at another learning "
        "rate (it is one network); use an encoder model (resnet18..resnet152, deeplab, "
        "smp:<Architecture>) or leave the key out"
        for line in keys
    ]


def encoder_of(model: nn.Module, key: str = FREEZE_KEY) -> nn.Module:
    """``model``'s encoder; a model without one is a :class:`ConfigError` naming ``key``."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(
            f"{key}: the model ({type(model).__name__}) has no encoder to freeze or to train at "
            "another learning rate"
        )
    return encoder


def parameter_groups(
    model: nn.Module, parameters: list[nn.Parameter], lr: float, lr_factor: float
) -> tuple[Any, list[float]]:
    """What the optimiser is built over, and each of its groups' learning-rate factor (for
    the scheduler's learning-rate values, :func:`landseg.tasks.optim.scheduler_kwargs`).

    ``lr_factor`` 1: every parameter in one group, as always, so the optimiser's state and
    checkpoints are what they were before the key existed, and runs trained then continue as
    before. Otherwise two groups, named, so that Lightning's learning-rate log says which is
    which: the rest's first, at ``lr`` (the learning rate that history.json, the run's scalars
    and the .pth metadata report is the first group's, train_setup.lr's schedule), then the
    encoder's, at ``lr_factor`` x ``lr``. Freezing needs no group of its own: every optimiser
    landseg offers skips the parameters that have no gradient, so the groups depend on the
    factor alone.

    ``parameters``: every parameter the optimiser updates, the encoder's included (their
    order is kept within each group).
    """
    if lr_factor == 1.0:
        return parameters, [1.0]
    encoder = {id(p) for p in encoder_of(model, FACTOR_KEY).parameters()}
    groups = [
        {"params": [p for p in parameters if id(p) not in encoder], "name": "rest"},
        {
            "params": [p for p in parameters if id(p) in encoder],
            "lr": lr * lr_factor,
            "name": "encoder",
        },
    ]
    return groups, [1.0, lr_factor]
