"""The torch Dataset of image/mask pairs: read, scale to 0-1, augment, standardise.

A sample is a pure function of its pair and its ``sample_seed`` (given by
:class:`~landseg.data.sampler.SeededSampler`), so it is identical in any worker process, for
any number of workers, and after a resume. Rasters are opened per read, never kept open, so
the dataset forks and pickles cleanly. With a :attr:`SegmentationDataset.cache` (set by the
datamodule, :mod:`landseg.data.cache`), a tile is decoded once and read back afterwards;
scaling, augmentation and standardisation still run on every read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from landseg.config.schema import SplitStats
from landseg.core.errors import ConfigError, DataError
from landseg.data.augmentations import build_augmentations
from landseg.data.cache import Decoded, TileCache, mask_dtype
from landseg.data.csvfiles import SamplePair
from landseg.data.normalization import scale, standardize
from landseg.data.raster import read_image_and_nodata, read_mask
from landseg.data.sampler import derive_seed
from landseg.data.summary import IGNORE_INDEX


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Samples ``{"image": (C, H, W) float32, "mask": (H, W) int64, "index": int}``.

    Index with an int (seed derived from ``seed`` and the index, as in epoch 0) or with the
    sampler's ``(index, sample_seed)`` tuple. Mask pixels without a class are
    :data:`~landseg.data.summary.IGNORE_INDEX`.
    """

    def __init__(
        self,
        pairs: Sequence[SamplePair],
        *,
        image_bands: Sequence[int] | None,
        mask_bands: Sequence[int] | None,
        n_classes: int,
        pixel_range: float | Mapping[str, float],
        stats: SplitStats | None = None,
        augmentations: Sequence[str] = (),
        seed: int = 0,
        ignore_index: int | None = None,
        cache: TileCache | None = None,
    ):
        self.pairs = list(pairs)
        self.image_bands = list(image_bands) if image_bands else None
        self.mask_bands = list(mask_bands) if mask_bands else None
        self.n_classes = n_classes
        self.pixel_range = pixel_range
        self.stats = stats
        self.augmentation_names = list(augmentations)
        try:
            self.augmentations = build_augmentations(self.augmentation_names)
        except KeyError as err:
            raise ConfigError(f"data_source.data_augmentation: {err.args[0]}") from err
        self.seed = seed
        self.ignore_index = ignore_index
        #: Where decoded tiles are kept between epochs (None: decode every read).
        self.cache: TileCache | None = cache
        #: Samples as raw uint8 pixels and classes in the smallest integer type that holds
        #: them, scaled after the transfer from a worker (:mod:`landseg.data.transport`; set
        #: on a loader's own copy of the dataset).
        self.compact = False

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        if sample_seed is None:
            sample_seed = derive_seed(self.seed, 0, index)
        raw, mask = self.sample_decoded(index, sample_seed)
        if self.compact:  # pixel permutations only: they commute with the scaling
            raw, mask = self._augment(raw, mask, sample_seed)
            # classes as int8 up to 127 of them (with the ignored -1): an eighth of int64
            classes = mask_dtype(self.n_classes)
            return {
                "image": torch.from_numpy(np.ascontiguousarray(raw, dtype=np.uint8)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=classes)),
                "index": index,
            }
        image, mask = self._augment(scale(raw, self.pixel_range), mask, sample_seed)
        image = standardize(image, self.stats)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "index": index,
        }

    def _augment(
        self, image: np.ndarray, mask: np.ndarray, sample_seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The augmentations in order, drawn from the sample's own seed."""
        if self.augmentations:
            rng = np.random.default_rng(sample_seed)
            for augment in self.augmentations:
                image, mask = augment(image, mask, rng)
        return image, mask

    def load(self, pair: SamplePair) -> tuple[np.ndarray, np.ndarray]:
        """The pair's 0-1 float32 image and int64 class mask, before augmentation."""
        raw, mask = self.decode(pair)
        return scale(raw, self.pixel_range), mask

    def sample_decoded(self, index: int, sample_seed: int) -> Decoded:
        """What item ``index`` decodes to: row ``index`` here; a dataset of random windows
        (:class:`~landseg.data.scenes.SceneDataset`) draws its window from ``sample_seed``."""
        return self.decoded(index)

    def decoded(self, index: int) -> Decoded:
        """Row ``index`` as :meth:`decode` returns it, from the cache when there is one."""
        pair = self.pairs[index]
        if self.cache is None:
            return self.decode(pair)
        return self.cache.fetch(index, pair, lambda: self.decode(pair))

    def decode(self, pair: SamplePair) -> Decoded:
        """The pair's image in the raster's dtype and its int64 class mask: what is cached.

        Image nodata pixels (every band at the image's nodata value) are ignored like
        unlabelled mask pixels, and their pixel values are set to 0 (black), whatever the
        nodata value was (255 would otherwise read as bright white, NaN as an error).
        """
        raw, missing = read_image_and_nodata(pair.image, self.image_bands)
        if missing is not None and missing.any():
            raw[:, missing] = 0
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            raise DataError(f"{pair.image}: image has NaN or infinite pixels ({pair.where()})")
        mask = read_mask(pair.mask, self.mask_bands, self.n_classes, self.ignore_index)
        if raw.shape[1:] != mask.shape:
            raise DataError(
                f"{pair.where()}: image {pair.image} is {raw.shape[2]}x{raw.shape[1]} but "
                f"mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]}"
            )
        if missing is not None:
            mask[missing] = IGNORE_INDEX
        return raw, mask
