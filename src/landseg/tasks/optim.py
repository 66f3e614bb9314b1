"""Optimiser and scheduler registries, with parameters checked against the real classes.

A config names an optimiser and passes its keyword arguments as-is (004). Rather than keep a
copy of every signature, :func:`optimizer_problems` and :func:`scheduler_problems` build the
real torch object on a dummy parameter: torch itself then rejects unknown keys and bad values,
and the message names the config key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from landseg.registry import Registry, unknown_name_message

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("adam", torch.optim.Adam)
OPTIMIZERS.add("adamw", torch.optim.AdamW)
OPTIMIZERS.add("radam", torch.optim.RAdam)
OPTIMIZERS.add("adamax", torch.optim.Adamax)
OPTIMIZERS.add("sgd", torch.optim.SGD)
OPTIMIZERS.add("rmsprop", torch.optim.RMSprop)

lr_scheduler = torch.optim.lr_scheduler
SCHEDULERS: Registry[type[Any]] = Registry("scheduler")
# 004: ReduceLROnPlateau by default with mode='min', factor=0.5, patience=10, min_lr=1e-7,
# cooldown=4. Step-based schedulers are stepped every batch, the others every epoch.
SCHEDULERS.add(
    "reducelronplateau",
    lr_scheduler.ReduceLROnPlateau,
    defaults={"mode": "min", "factor": 0.5, "patience": 10, "min_lr": 1e-7, "cooldown": 4},
    interval="epoch",
    needs_monitor=True,
)
SCHEDULERS.add(
    "cycliclr",
    lr_scheduler.CyclicLR,
    defaults={"base_lr": None, "max_lr": None},  # None: filled from train_setup.lr
    interval="step",
)
SCHEDULERS.add("cosineannealinglr", lr_scheduler.CosineAnnealingLR, defaults={}, interval="epoch")
SCHEDULERS.add(
    "cosineannealingwarmrestarts",
    lr_scheduler.CosineAnnealingWarmRestarts,
    defaults={},
    interval="epoch",
)

_OPTIMIZER_FIXED = {"params", "lr"}
_SCHEDULER_FIXED = {"optimizer", "verbose"}


def scheduler_kwargs(name: str, params: dict[str, Any], lr: float, epochs: int) -> dict[str, Any]:
    """The scheduler's keyword arguments: registry defaults, then the user's values.

    CyclicLR cycles between lr and 10 x lr unless told otherwise; cosine annealing spans the
    whole run (T_max = epochs) unless told otherwise.
    """
    info = SCHEDULERS.info(name)
    kwargs = {**info.get("defaults", {}), **params}
    canonical = SCHEDULERS.canonical(name)
    if canonical == "cycliclr":
        kwargs["base_lr"] = kwargs.get("base_lr") or lr
        kwargs["max_lr"] = kwargs.get("max_lr") or 10 * lr
    if canonical == "cosineannealinglr":
        kwargs.setdefault("T_max", epochs)
    if canonical == "cosineannealingwarmrestarts":
        kwargs.setdefault("T_0", max(1, epochs // 4))
    return kwargs


def build_optimizer(
    name: str, parameters: Any, lr: float, params: dict[str, Any]
) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(name)(parameters, lr=lr, **params)


def build_scheduler(
    name: str, optimizer: torch.optim.Optimizer, params: dict[str, Any], lr: float, epochs: int
) -> Any:
    return SCHEDULERS.get(name)(optimizer, **scheduler_kwargs(name, params, lr, epochs))


def _constructor_problems(
    registry: Registry[Any],
    kind: str,
    name: str,
    params: dict[str, Any],
    fixed: set[str],
    build: Callable[[], Any],
) -> list[str]:
    """Problems with ``<kind>_config``: unknown name, unknown keys, values torch rejects."""
    key = f"train_setup.{kind}_config"
    if name not in registry:
        return [f"{key}.{kind}: " + unknown_name_message(kind, name, registry.names())]
    cls = registry.get(name)
    accepted = [p for p in inspect.signature(cls).parameters if p not in fixed]
    unknown = [k for k in params if k not in accepted]
    if unknown:
        return [
            f"{key}.{k}: not a parameter of {cls.__name__}; valid: {', '.join(accepted)}"
            for k in unknown
        ]
    try:
        build()
    except (TypeError, ValueError) as error:
        culprit = _culprit(str(error), params)
        return [f"{key}{'.' + culprit if culprit else ''}: {cls.__name__} rejects it: {error}"]
    return []


def _dummy_parameters() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(1))]


def optimizer_problems(name: str, params: dict[str, Any], lr: float) -> list[str]:
    return _constructor_problems(
        OPTIMIZERS,
        "optimizer",
        name,
        params,
        _OPTIMIZER_FIXED,
        lambda: build_optimizer(name, _dummy_parameters(), lr, params),
    )


def scheduler_problems(name: str, params: dict[str, Any], lr: float, epochs: int) -> list[str]:
    def build() -> Any:
        optimizer = torch.optim.SGD(_dummy_parameters(), lr=lr, momentum=0.9)
        return build_scheduler(name, optimizer, params, lr, epochs)

    return _constructor_problems(SCHEDULERS, "scheduler", name, params, _SCHEDULER_FIXED, build)


def _culprit(message: str, params: dict[str, Any]) -> str | None:
    """The parameter a torch error message is about, when it names one we were given."""
    lowered = message.lower()
    for key in params:
        if key.lower() in lowered or key.lower().replace("_", " ") in lowered:
            return key
    return None
