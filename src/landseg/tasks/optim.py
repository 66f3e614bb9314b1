"""Optimiser and scheduler registries, with parameters checked against the real classes.

A config names an optimiser and passes its keyword arguments as-is (as ODEON's train tool does).
Rather than keep a
copy of every signature, :func:`optimizer_problems` and :func:`scheduler_problems` build the
real torch object on a dummy parameter: torch itself then rejects unknown keys and bad values,
and the message names the config key. Before that, each value is checked against the type the
constructor's signature declares (``patience: int``), which torch does not check itself (a
``patience: "two"`` would only fail after the first epoch); values of the declared type
written as strings, as YAML 1.1 reads ``1e-7``, are converted, for validation and training
alike (:func:`typed_params`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError

from landseg.core.registry import Registry, unknown_name_message

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("adam", torch.optim.Adam)
OPTIMIZERS.add("adamw", torch.optim.AdamW)
OPTIMIZERS.add("radam", torch.optim.RAdam)
OPTIMIZERS.add("adamax", torch.optim.Adamax)
OPTIMIZERS.add("sgd", torch.optim.SGD)
OPTIMIZERS.add("rmsprop", torch.optim.RMSprop)

lr_scheduler = torch.optim.lr_scheduler
SCHEDULERS: Registry[type[Any]] = Registry("scheduler")
# ODEON's train tool: ReduceLROnPlateau by default with mode='min', factor=0.5, patience=10,
# min_lr=1e-7,
# cooldown=4. Step-based schedulers are stepped every batch, the others every epoch.
SCHEDULERS.add(
    "reducelronplateau",
    lr_scheduler.ReduceLROnPlateau,
    defaults={"mode": "min", "factor": 0.5, "patience": 10, "min_lr": 1e-7, "cooldown": 4},
    interval="epoch",
    needs_monitor=True,
    group_lr_keys=("min_lr",),
)
SCHEDULERS.add(
    "cycliclr",
    lr_scheduler.CyclicLR,
    defaults={"base_lr": None, "max_lr": None},  # None: filled from train_setup.lr
    interval="step",
    group_lr_keys=("base_lr", "max_lr"),
)
SCHEDULERS.add(
    "cosineannealinglr",
    lr_scheduler.CosineAnnealingLR,
    defaults={},
    interval="epoch",
    shared_lr_keys=("eta_min",),
)
SCHEDULERS.add(
    "cosineannealingwarmrestarts",
    lr_scheduler.CosineAnnealingWarmRestarts,
    defaults={},
    interval="epoch",
    shared_lr_keys=("eta_min",),
)
# Learning rates in a scheduler's arguments: ``group_lr_keys`` take one value per parameter
# group, and are scaled by each group's factor (train_setup.encoder_lr_factor), so that the
# encoder's learning rate stays that factor times the rest's through the whole schedule;
# ``shared_lr_keys`` take one value for every group, which would break that ratio: a factor
# other than 1 is refused with one of them set (prepare's check, scheduler_problems).
# ReduceLROnPlateau's ``eps`` (1e-8: a decay smaller than that is skipped) is one value too;
# it only matters once a group's learning rate is within a few times 1e-8 of its floor.

_OPTIMIZER_FIXED = {"params", "lr"}
_SCHEDULER_FIXED = {"optimizer", "verbose"}


def scheduler_kwargs(
    name: str,
    params: dict[str, Any],
    lr: float,
    epochs: int,
    lr_factors: Sequence[float] = (1.0,),
) -> dict[str, Any]:
    """The scheduler's keyword arguments: registry defaults, then the user's values.

    CyclicLR cycles between lr and 10 x lr unless told otherwise; cosine annealing spans the
    whole run (T_max = epochs) unless told otherwise. ``lr_factors``: each parameter group's
    learning-rate factor (:func:`landseg.tasks.finetune.parameter_groups`); with more than one
    group, each learning rate among the arguments (``group_lr_keys``) becomes one value per
    group, scaled by its factor.
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
    if len(lr_factors) > 1:
        for key in info.get("group_lr_keys", ()):
            value = kwargs.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                kwargs[key] = [value * factor for factor in lr_factors]
    return kwargs


_LAX = ConfigDict(arbitrary_types_allowed=True)


def _signature(cls: type[Any]) -> inspect.Signature:
    """``cls``'s signature, with string annotations resolved in its module where they can be."""
    try:
        return inspect.signature(cls, eval_str=True)
    except Exception:  # a name its module cannot resolve: the annotations stay strings
        return inspect.signature(cls)


def _declared_type(parameter: inspect.Parameter) -> Any | None:
    """The type a constructor parameter declares (its default's type without annotation)."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        default = parameter.default
        return type(default) if type(default) in (bool, int, float, str) else None
    return None if isinstance(annotation, str) else annotation


def typed_params(
    cls: type[Any], params: dict[str, Any], key: str
) -> tuple[dict[str, Any], list[str]]:
    """``params`` converted to the types ``cls``'s signature declares, and one line per value
    that is not of its type (``key``: the config section, for the lines)."""
    signature = _signature(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in params.items():
        parameter = signature.parameters.get(name)
        declared = _declared_type(parameter) if parameter is not None else None
        if declared is None:
            values[name] = value
            continue
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(declared, config=_LAX)
        except Exception:  # a type pydantic cannot check: torch checks it when built
            values[name] = value
            continue
        try:
            values[name] = adapter.validate_python(value)
        except ValidationError:
            name_of = declared.__name__ if isinstance(declared, type) else str(declared)
            expected = name_of.replace("typing.", "")
            problems.append(
                f"{key}.{name}: {cls.__name__} takes {expected}, got {value!r} "
                f"({type(value).__name__})"
            )
    return values, problems


def _typed_or_raise(cls: type[Any], params: dict[str, Any], key: str) -> dict[str, Any]:
    values, problems = typed_params(cls, params, key)
    if problems:
        from landseg.core.errors import ConfigError

        raise ConfigError(problems)
    return values


#: The keyword arguments by which a config chooses how an optimiser computes its step. When it
#: names none of them, :func:`build_optimizer` picks the fused kernel.
STEP_IMPLEMENTATION_KEYS = ("fused", "foreach", "differentiable", "capturable")


def build_optimizer(
    name: str, parameters: Any, lr: float, params: dict[str, Any]
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``parameters``, with the config's keyword arguments.

    Where the class has a fused kernel (Adam, AdamW, SGD) and the config chooses no step
    implementation, the fused one is used: one kernel over all the parameters instead of
    torch's default ``foreach`` ops, a quarter of the time of an Adam step on a CPU (7.6
    against 35 ms for a U-Net ResNet-18) and the standard fast path on GPUs. Its step is the
    same update, computed in another order, so values may differ from ``foreach`` in the last
    bits; a config that writes ``fused: false`` or ``foreach: true`` gets torch's default. A
    continued run keeps the implementation its checkpoint records (the optimiser's
    ``param_groups`` are restored with it). Where the parameters' device has no fused kernel,
    torch's default is kept.
    """
    cls = OPTIMIZERS.get(name)
    values = _typed_or_raise(cls, params, "train_setup.optimizer_config")
    parameters = list(parameters)
    if _fused_by_default(cls, values, parameters):
        values = {**values, "fused": True}
    optimizer: torch.optim.Optimizer = cls(parameters, lr=lr, **values)  # type: ignore[call-arg]
    return optimizer


#: The devices whose fused optimiser kernels landseg uses by default (torch checks the device
#: only at the first step, so it is checked here, before).
_FUSED_DEVICES = ("cpu", "cuda")


def _fused_by_default(
    cls: type[torch.optim.Optimizer], values: dict[str, Any], parameters: list[Any]
) -> bool:
    if "fused" not in inspect.signature(cls).parameters:
        return False
    if any(key in values for key in STEP_IMPLEMENTATION_KEYS):
        return False
    tensors = [
        p for item in parameters for p in (item["params"] if isinstance(item, dict) else [item])
    ]
    return all(
        isinstance(p, torch.Tensor) and p.is_floating_point() and p.device.type in _FUSED_DEVICES
        for p in tensors
    )


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    params: dict[str, Any],
    lr: float,
    epochs: int,
    lr_factors: Sequence[float] = (1.0,),
) -> Any:
    """The scheduler ``name`` over ``optimizer``; ``lr_factors``: one per parameter group
    (see :func:`scheduler_kwargs`)."""
    cls = SCHEDULERS.get(name)
    values = _typed_or_raise(cls, params, "train_setup.scheduler_config")
    return cls(optimizer, **scheduler_kwargs(name, values, lr, epochs, lr_factors))


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
    _, type_problems = typed_params(cls, params, key)
    if type_problems:
        return type_problems
    try:
        build()
    except (TypeError, ValueError) as error:
        culprit = _culprit(str(error), params)
        return [f"{key}{'.' + culprit if culprit else ''}: {cls.__name__} rejects it: {error}"]
    except ArithmeticError as error:  # accepted, then fails at its first step
        given = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "its defaults"
        return [f"{key}: {cls.__name__} with {given} fails at its first step: {error}"]
    return []


def _dummy_parameters() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(1))]


#: What torch's ``Optimizer.__init__`` says of an empty parameter list: the subclass checked
#: its arguments before, so for validation this means they passed.
_EMPTY_PARAMETERS = "optimizer got an empty parameter list"


def _check_optimizer(name: str, lr: float, params: dict[str, Any]) -> None:
    """Build the optimizer on no parameter: its constructor checks every argument first.

    A real parameter would make torch import ``torch._dynamo`` (about 1 s of CPU, through
    ``add_param_group``'s decorator): validation would cost more than the rest of it.
    """
    cls = OPTIMIZERS.get(name)
    values = _typed_or_raise(cls, params, "train_setup.optimizer_config")
    try:
        cls([], lr=lr, **values)  # type: ignore[call-arg]
    except ValueError as error:
        if str(error) != _EMPTY_PARAMETERS:
            raise


def _validation_optimizer(lr: float) -> torch.optim.Optimizer:
    """An SGD optimizer (momentum 0.9) holding one empty parameter group, for schedulers to
    check their arguments against: what a scheduler reads of its optimizer is its
    ``param_groups``. Made without ``Optimizer.__init__`` for the reason given in
    :func:`_check_optimizer`; a test checks that every scheduler accepts and rejects the same
    arguments with it as with a real optimizer."""
    optimizer = torch.optim.SGD.__new__(torch.optim.SGD)
    group = {
        "params": [],
        "lr": lr,
        "momentum": 0.9,
        "dampening": 0,
        "weight_decay": 0,
        "nesterov": False,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": None,
    }
    optimizer.defaults = {k: v for k, v in group.items() if k != "params"}
    optimizer.state = {}  # type: ignore[assignment]
    optimizer.param_groups = [group]
    return optimizer


def optimizer_problems(name: str, params: dict[str, Any], lr: float) -> list[str]:
    return _constructor_problems(
        OPTIMIZERS,
        "optimizer",
        name,
        params,
        _OPTIMIZER_FIXED,
        lambda: _check_optimizer(name, lr, params),
    )


def scheduler_problems(
    name: str, params: dict[str, Any], lr: float, epochs: int, encoder_lr_factor: float = 1.0
) -> list[str]:
    def build() -> Any:
        scheduler = build_scheduler(name, _validation_optimizer(lr), params, lr, epochs)
        _first_steps(scheduler)
        return scheduler

    problems = _constructor_problems(SCHEDULERS, "scheduler", name, params, _SCHEDULER_FIXED, build)
    if problems or encoder_lr_factor == 1.0:
        return problems
    cls = SCHEDULERS.get(name)
    values, _ = typed_params(cls, params, "train_setup.scheduler_config")
    kwargs = scheduler_kwargs(name, values, lr, epochs)
    cls_name = cls.__name__
    return [
        f"train_setup.scheduler_config.{key}: {cls_name} takes one {key} for every parameter "
        f"group, so with train_setup.encoder_lr_factor {encoder_lr_factor} the encoder's "
        "learning rate would not stay that factor times the rest's; leave "
        f"{key} at 0, or encoder_lr_factor at 1"
        for key in SCHEDULERS.info(name).get("shared_lr_keys", ())
        if kwargs.get(key)
    ]


def _first_steps(scheduler: Any, steps: int = 2) -> None:
    """Step a scheduler as training will: some values fail only then (CosineAnnealingLR's
    ``T_max: 0`` divides by it at its first step, after the first epoch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepped before any optimizer step: torch says so
        for _ in range(steps):
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step(1.0)
            else:
                scheduler.step()


def _culprit(message: str, params: dict[str, Any]) -> str | None:
    """The parameter a torch error message is about, when it names one we were given."""
    lowered = message.lower()
    for key in params:
        if key.lower() in lowered or key.lower().replace("_", " ") in lowered:
            return key
    return None
