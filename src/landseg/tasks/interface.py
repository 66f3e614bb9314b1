"""What callbacks and loggers may read from a task: a typed protocol, not ``getattr`` probes.

:class:`~landseg.tasks.segmentation.SegmentationTask` implements it; a custom LightningModule
that wants landseg's callbacks (history, figures, image grids, ``.pth`` export) implements the
same attributes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn


@runtime_checkable
class SegmentationModule(Protocol):
    """A LightningModule that segments images into ``class_labels``.

    Attributes:
        model: the network (``(B, in_channels, H, W)`` -> logits ``(B, n_classes, H, W)``).
        in_channels: image bands the network takes.
        class_labels: one name per class.
        last_confusion: the confusion matrix (rows true, columns predicted) of the latest
            validation or test, summed over every rank; None before any.
        last_report: the per-class and mean metrics of that confusion matrix (see
            :func:`landseg.tasks.metrics.metrics_from_confusion`); None before any.
    """

    model: nn.Module
    in_channels: int
    class_labels: list[str]
    last_confusion: np.ndarray | None
    last_report: dict[str, Any] | None


def segmentation_module(module: Any) -> SegmentationModule:
    """``module`` as a :class:`SegmentationModule`, or a TypeError naming what it lacks."""
    if not isinstance(module, SegmentationModule):
        missing = [
            name
            for name in ("model", "in_channels", "class_labels", "last_confusion", "last_report")
            if not hasattr(module, name)
        ]
        raise TypeError(
            f"{type(module).__name__} is not a segmentation module for landseg's callbacks; "
            f"it lacks: {', '.join(missing)}"
        )
    return module
