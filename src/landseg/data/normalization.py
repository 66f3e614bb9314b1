"""Pixel normalisation: scale to 0-1 by ``pixel_range``, then optionally ``(x - mean) / std``.

The pixel range (the value that maps to 1.0) follows the image dtype unless
``data_source.pixel_range`` is set:

* uint8: 255;
* float rasters: 1.0, i.e. used as is (assumed already in 0-1);
* any other integer type (uint16, int16, uint32, ...): required. Such rasters hold 10-, 12- or
  16-bit data whose range the dtype does not tell, so landseg never silently divides by 255.

Mean/std come from ``data_source.normalization_weights`` for the split, falling back to the
train stats (:meth:`NormalizationWeights.for_split`); they are in the 0-1 range (ODEON rule).
Values are not clipped: a pixel above ``pixel_range`` scales above 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landseg.config.schema import SplitStats
from landseg.core.errors import DataError


def resolve_pixel_range(
    dtype: str | np.dtype, configured: float | None, source: str | Path | None = None
) -> float:
    """The value that maps to 1.0 for images of ``dtype``; DataError where it must be given."""
    if configured is not None:
        return float(configured)
    kind = np.dtype(dtype)
    if kind == np.uint8:
        return 255.0
    if kind.kind in "fb":
        return 1.0
    where = f" (e.g. {source})" if source else ""
    raise DataError(
        f"data_source.pixel_range is required for {kind.name} images{where}: set the value "
        f"that maps to 1.0 (e.g. 4095 for 12-bit or 65535 for 16-bit data); "
        "only uint8 (255) and float (used as is) have a default"
    )


def scale(image: np.ndarray, pixel_range: float) -> np.ndarray:
    """The image as float32 in the 0-1 range (values above ``pixel_range`` scale above 1)."""
    scaled = image.astype(np.float32)
    if pixel_range != 1.0:
        scaled /= np.float32(pixel_range)
    return scaled


def standardize(image: np.ndarray, stats: SplitStats | None) -> np.ndarray:
    """``(image - mean) / std`` per band; the image unchanged without stats."""
    if stats is None:
        return image
    if len(stats.mean) != image.shape[0]:
        raise DataError(
            f"data_source.normalization_weights: {len(stats.mean)} mean values but the "
            f"image has {image.shape[0]} bands"
        )
    mean = np.asarray(stats.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(stats.std, dtype=np.float32)[:, None, None]
    return (image - mean) / std
