"""Checks that need the registries: names exist and the named parts fit together.

Seed 003: "fail before training if a trainer-configuration combo isn't compatible". Every
function returns one-line problems naming the key; :func:`check_config` gathers them all.
"""

from __future__ import annotations

import importlib.util
import warnings

from landseg.config.schema import LandsegConfig
from landseg.errors import ConfigError
from landseg.registry import unknown_name_message

EXPORT_FORMATS = ("pth", "torchscript")


def accelerator_names() -> list[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return sorted({*AcceleratorRegistry.available_accelerators(), "auto", "gpu"})


def strategy_names() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return sorted({*StrategyRegistry.available_strategies(), "auto"})


def n_classes_from_config(config: LandsegConfig) -> int | None:
    """The number of classes when the config alone tells it (else the data does)."""
    data = config.data_source
    if data.mask_bands:
        return len(data.mask_bands)
    if data.class_labels:
        return len(data.class_labels)
    return None


def _train_problems(config: LandsegConfig) -> list[str]:
    from landseg.models.registry import check_model_params
    from landseg.tasks.losses import LOSSES
    from landseg.tasks.optim import optimizer_problems, scheduler_problems

    train = config.train_setup
    problems = list(check_model_params(train.model_name, train.model_params, None))
    if train.loss not in LOSSES:
        problems.append(
            "train_setup.loss: " + unknown_name_message("loss", train.loss, LOSSES.names())
        )
    elif train.class_imbalance is not None and not LOSSES.info(train.loss).get(
        "supports_class_weights"
    ):
        usable = [n for n in LOSSES.names() if LOSSES.info(n).get("supports_class_weights")]
        problems.append(
            f"train_setup.class_imbalance: loss '{train.loss}' cannot use class weights; "
            f"use one of: {', '.join(usable)}, or remove class_imbalance"
        )
    optimizer = train.optimizer_config
    problems += optimizer_problems(optimizer.optimizer, optimizer.params, train.lr)
    scheduler = train.scheduler_config
    problems += scheduler_problems(scheduler.scheduler, scheduler.params, train.lr, train.epochs)
    exports = train.export_checkpoint
    for fmt in [exports] if isinstance(exports, str) else exports or []:
        if fmt.lower().lstrip(".") not in EXPORT_FORMATS:
            problems.append(
                "train_setup.export_checkpoint: "
                + unknown_name_message("export format", fmt, list(EXPORT_FORMATS))
            )
    return problems


def _data_problems(config: LandsegConfig) -> list[str]:
    from landseg.data.augmentations import AUGMENTATIONS

    data = config.data_source
    problems: list[str] = []
    if data.data_augmentation:
        for i, name in enumerate(data.data_augmentation.train):
            if name not in AUGMENTATIONS:
                problems.append(
                    f"data_source.data_augmentation.train[{i}]: "
                    + unknown_name_message("augmentation", name, AUGMENTATIONS.names())
                )
    if data.class_labels and data.mask_bands and len(data.class_labels) != len(data.mask_bands):
        problems.append(
            f"data_source.class_labels: {len(data.class_labels)} names but mask_bands selects "
            f"{len(data.mask_bands)} classes"
        )
    weights = data.normalization_weights
    if weights and data.image_bands:
        for split in ("train", "val", "test"):
            stats = getattr(weights, split)
            if stats and len(stats.mean) != len(data.image_bands):
                problems.append(
                    f"data_source.normalization_weights.{split}.mean: {len(stats.mean)} values "
                    f"but image_bands selects {len(data.image_bands)} bands"
                )
    n_classes = n_classes_from_config(config)
    imbalance = config.train_setup.class_imbalance
    if imbalance is not None and n_classes is not None and len(imbalance) != n_classes:
        problems.append(
            f"train_setup.class_imbalance: {len(imbalance)} weights but there are "
            f"{n_classes} classes"
        )
    if imbalance is not None and not any(imbalance):
        problems.append("train_setup.class_imbalance: every weight is 0, nothing would be learnt")
    return problems


def _output_problems(config: LandsegConfig) -> list[str]:
    out = config.output_setup
    problems: list[str] = []
    if out.get_prediction and config.data_source.test_file is None:
        problems.append(
            "output_setup.get_prediction: predictions are made on the test split; "
            "set data_source.test_file or get_prediction false"
        )
    if out.use_wandb and importlib.util.find_spec("wandb") is None:
        problems.append(
            "output_setup.use_wandb: the wandb package is not installed; "
            "install landseg[wandb] or set use_wandb false"
        )
    return problems


def _device_problems(config: LandsegConfig) -> list[str]:
    device = config.device_setup
    problems: list[str] = []
    if device.accelerator is not None and device.accelerator.lower() not in accelerator_names():
        problems.append(
            "device_setup.accelerator: "
            + unknown_name_message("accelerator", device.accelerator, accelerator_names())
        )
    if device.strategy is not None and device.strategy.lower() not in strategy_names():
        problems.append(
            "device_setup.strategy: "
            + unknown_name_message("strategy", device.strategy, strategy_names())
        )
    value = device.device
    if isinstance(value, int) and value < 0:
        problems.append(f"device_setup.device: must be >= 0 (0 means the CPU), got {value}")
    if isinstance(value, str) and not all(p.strip().isdigit() for p in value.split(",")):
        problems.append(
            f'device_setup.device: expected a device id such as "0" or "0,1", got \'{value}\''
        )
    if isinstance(value, list) and (not value or any(v < 0 for v in value)):
        problems.append(f"device_setup.device: expected device ids >= 0, got {value}")
    return problems


def check_config(config: LandsegConfig) -> LandsegConfig:
    """Raise one :class:`ConfigError` listing every registry/compatibility problem."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch deprecation notes on dummy schedulers
        problems = (
            _data_problems(config)
            + _train_problems(config)
            + _output_problems(config)
            + _device_problems(config)
        )
    if problems:
        raise ConfigError(problems)
    return config
