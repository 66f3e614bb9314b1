"""Loggers by name (``output_setup.loggers``): one registry entry is one new logger.

An entry is a factory ``(run: RunFolder) -> lightning Logger`` with ``info``:

- ``package``: the Python package it needs (checked before training, with the extra to
  install);
- ``logger_class`` and ``images``: for loggers that take images, the dotted class name of the
  logger the factory builds and ``(logger, phase, tag, rgb, step) -> None``; the run logger
  sends its figures, and the image-grid callback its grids, to every such logger.

The factories import their logger classes when called, so reading the registry (validation,
``landseg --help``) imports neither Lightning's loggers nor their backends.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from landseg.core.registry import Registry, unknown_name_message
from landseg.runs.folder import RunFolder

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

LoggerFactory = Callable[[RunFolder], "Logger"]
ImageWriter = Callable[[Any, str, str, np.ndarray, int], None]
#: ``write(phase, tag, rgb (H, W, 3) uint8, step)``: an image for one logger.
ImageSink = Callable[[str, str, np.ndarray, int], None]

LOGGERS: Registry[LoggerFactory] = Registry("logger")


def _tensorboard(run: RunFolder) -> Logger:
    from landseg.loggers.tensorboard import PhaseTensorBoardLogger

    return PhaseTensorBoardLogger(run.tensorboard)


def _tensorboard_image(logger: Any, phase: str, tag: str, rgb: np.ndarray, step: int) -> None:
    logger.writer(phase).add_image(tag, rgb, step, dataformats="HWC")


def _wandb(run: RunFolder) -> Logger:
    from landseg.loggers.wandb import make_wandb_logger

    return make_wandb_logger(run.path, run.path.parent.name, run.path.name)


def _wandb_image(logger: Any, phase: str, tag: str, rgb: np.ndarray, step: int) -> None:
    logger.log_image(key=f"{phase}/{tag}", images=[rgb], step=step)


def _csv(run: RunFolder) -> Logger:
    from landseg.loggers.csv_logger import make_csv_logger

    return make_csv_logger(run.csv_logs)


LOGGERS.add(
    "tensorboard",
    _tensorboard,
    package="tensorboard",
    logger_class="landseg.loggers.tensorboard.PhaseTensorBoardLogger",
    images=_tensorboard_image,
)
LOGGERS.add(
    "wandb",
    _wandb,
    package="wandb",
    extra="wandb",
    logger_class="lightning.pytorch.loggers.wandb.WandbLogger",
    images=_wandb_image,
)
LOGGERS.add("csv", _csv)

#: The key the problems of logger names are reported under.
LOGGERS_KEY = "output_setup.loggers"


def logger_problems(names: Sequence[str], keys: Sequence[str] | None = None) -> list[str]:
    """Unknown logger names, repeated ones, and loggers whose package is not installed.

    ``keys``: the config key each name came from (default ``output_setup.loggers[i]``).
    """
    problems = []
    for i, name in enumerate(names):
        key = keys[i] if keys is not None else f"{LOGGERS_KEY}[{i}]"
        if name not in LOGGERS:
            problems.append(f"{key}: " + unknown_name_message("logger", name, LOGGERS.names()))
            continue
        info = LOGGERS.info(name)
        package = info.get("package")
        if package and importlib.util.find_spec(package) is None:
            extra = info.get("extra")
            hint = f"install landseg[{extra}]" if extra else f"install {package}"
            problems.append(
                f"{key}: the {package} package is not installed; {hint} or do without '{name}'"
            )
    repeated = sorted({LOGGERS.canonical(n) for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"{LOGGERS_KEY}: each logger once; repeated: {', '.join(repeated)}")
    return problems


def build_loggers(names: Iterable[str], run: RunFolder) -> list[Logger]:
    """The named loggers, built for ``run``."""
    return [LOGGERS.get(name)(run) for name in names]


def image_writers_of(loggers: Iterable[Any]) -> list[ImageSink]:
    """``write(phase, tag, rgb, step)`` for each of ``loggers`` that takes images.

    A logger takes images when it is of the class its registry entry names (``logger_class``,
    a dotted path compared with the logger's classes, so nothing is imported here) and the
    entry has an ``images`` function.
    """
    writers: list[ImageSink] = []
    for logger in loggers:
        classes = {f"{k.__module__}.{k.__qualname__}" for k in type(logger).__mro__}
        for name in LOGGERS:
            info = LOGGERS.info(name)
            if info.get("images") is not None and info.get("logger_class") in classes:
                writers.append(partial(info["images"], logger))
                break
    return writers
