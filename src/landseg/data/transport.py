"""Compact batches from the DataLoader workers: uint8 images and small masks, scaled after.

A worker hands each sample to the main process through shared memory. A float32 image and an
int64 mask are 1.3 MB for a 256x256 RGB tile; its uint8 pixels and int8 classes (int16 above
127 classes) are 0.26 MB. With the decoded-tile cache a worker does little else, and this
transfer became what limits a loader with workers (benchmarks/README.md, section 9b). So, when
it changes nothing, the train and val workers send the raw pixels (after the augmentations)
and the batch is scaled and standardised after it reaches its device (the datamodule's
``on_after_batch_transfer``): on a GPU for free, after a transfer five times smaller; on the
CPU in the training process, with numpy's one-pass uint8-to-float32 divide, which costs it
less than the transfer saves (:data:`COMPACT_ON_CPU`; benchmarks/README.md, section 9d).

"When it changes nothing": the images are uint8 (what the cache keeps, before any float
arithmetic), every augmentation is a permutation of pixels (``rotation90``: rotating then
scaling is scaling then rotating, exactly), and there are workers (without, nothing is
transferred). The scaling is then the very same float32 arithmetic as the dataset's
(:func:`~landseg.data.normalization.scale` then ``standardize``), so a batch is bit for bit the
one the plain path gives (tested). Anything else keeps the plain float32 samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from landseg.config.schema import SplitStats

#: Whether a run on the CPU sends compact batches too (a run on a GPU always does): the
#: scaling then runs in the training process, and costs it less than the larger transfer
#: from the workers saves (benchmarks/README.md, section 9d). The switch of the tests.
COMPACT_ON_CPU = True

#: Augmentations that only move pixels, so they commute with the per-pixel scaling.
PIXEL_PERMUTATIONS = frozenset({"rotation90"})


def compact_eligible(image_dtype: str, augmentations: Sequence[str], workers: int) -> bool:
    """Whether a loader may send raw uint8 images (see the module's docstring)."""
    return workers > 0 and image_dtype == "uint8" and set(augmentations) <= PIXEL_PERMUTATIONS


def compact_for(on_gpu: bool) -> bool:
    """Whether a run whose batches go to a GPU (``on_gpu``) or stay on the CPU sends compact
    batches from eligible loaders (:func:`compact_eligible`)."""
    return on_gpu or COMPACT_ON_CPU


def is_compact(batch: Any) -> bool:
    return (
        isinstance(batch, dict)
        and batch.get("image") is not None
        and (batch["image"].dtype == torch.uint8)
    )


class BatchScaler:
    """Turns a compact batch (uint8 image, int8 or int16 mask) into the plain one (float32
    scaled and standardised image, int64 mask), on whatever device it is; plain batches pass
    unchanged."""

    def __init__(self, pixel_range: float, stats: SplitStats | None):
        self.pixel_range = np.float32(pixel_range)
        self.mean = None if stats is None else torch.tensor(stats.mean, dtype=torch.float32)
        self.std = None if stats is None else torch.tensor(stats.std, dtype=torch.float32)

    def __call__(self, batch: Any) -> Any:
        if not is_compact(batch):
            return batch
        uint8 = batch["image"]
        image = self._scale_here(uint8) if uint8.device.type == "cpu" else self._scale(uint8)
        return {**batch, "image": image, "mask": batch["mask"].to(torch.int64)}

    def _scale(self, uint8: torch.Tensor) -> torch.Tensor:
        """On a GPU: in place on the one float32 copy, the same arithmetic as the dataset's."""
        image = uint8.to(torch.float32)
        if self.pixel_range != 1.0:  # by a float32 tensor, as the dataset divides by np.float32
            image.div_(torch.full((), float(self.pixel_range), device=image.device))
        if self.mean is not None and self.std is not None:
            shape = (1, -1, 1, 1)
            image.sub_(self.mean.to(image.device).view(shape))
            image.div_(self.std.to(image.device).view(shape))
        return image

    def _scale_here(self, uint8: torch.Tensor) -> torch.Tensor:
        """On the CPU, in the training process: numpy's divide reads the uint8 pixels and
        writes float32 quotients in one pass (torch converts, then divides: two), then the
        standardisation in place. Each step is the dataset's own float32 operation (uint8 to
        float32 is exact), so the result is bit for bit the same, for less CPU than
        :meth:`_scale` (0.70 against 0.87 ms a Dubai batch; benchmarks/README.md, 9d)."""
        image = np.divide(uint8.numpy(), self.pixel_range, dtype=np.float32)
        if self.mean is not None and self.std is not None:
            shape = (1, -1, 1, 1)
            np.subtract(image, self.mean.numpy().reshape(shape), out=image)
            np.divide(image, self.std.numpy().reshape(shape), out=image)
        return torch.from_numpy(image)
