"""Pixel normalisation: scale to 0-1 by ``pixel_range``, then optionally ``(x - mean) / std``.

The pixel range (the value that maps to 1.0) follows the image dtype unless
``data_source.pixel_range`` is set:

* uint8: 255;
* float rasters: 1.0, i.e. used as is (assumed already in 0-1);
* any other integer type (uint16, int16, uint32, ...): required. Such rasters hold 10-, 12- or
  16-bit data whose range the dtype does not tell, so landseg never silently divides by 255.

``pixel_range`` is one number (every image, whatever its dtype) or a value per dtype
(``{"uint16": 4095}``): a dtype it names takes that value, the others their default above.
Images of several dtypes may be mixed (scenes or tiles) where every dtype's scaling is known,
and only with a per-dtype value: one number for several dtypes would divide a uint8 image by
a 12-bit range (:func:`dtype_ranges`). Each sample is then scaled by its own dtype's value.

Mean/std come from ``data_source.normalization_weights`` for the split, falling back to the
train stats (:meth:`NormalizationWeights.for_split`); they are in the 0-1 range (ODEON rule).
Values are not clipped: a pixel above ``pixel_range`` scales above 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from landseg.config.schema import SplitStats
from landseg.core.errors import DataError

#: ``data_source.pixel_range``: one value for every image, a value per dtype name, or none.
PixelRange = float | Mapping[str, float] | None


def resolve_pixel_range(
    dtype: str | np.dtype, configured: PixelRange, source: str | Path | None = None
) -> float:
    """The value that maps to 1.0 for images of ``dtype``; DataError where it must be given."""
    kind = np.dtype(dtype)
    if isinstance(configured, Mapping):
        if kind.name in configured:
            return float(configured[kind.name])
    elif configured is not None:
        return float(configured)
    if kind == np.uint8:
        return 255.0
    if kind.kind in "fb":
        return 1.0
    where = f" (e.g. {source})" if source else ""
    if isinstance(configured, Mapping):
        raise DataError(
            f"data_source.pixel_range gives no value for {kind.name} images{where}: add "
            f'"{kind.name}": the value that maps to 1.0 (e.g. 4095 for 12-bit data); only '
            "uint8 (255) and float (used as is) have a default"
        )
    raise DataError(
        f"data_source.pixel_range is required for {kind.name} images{where}: set the value "
        f"that maps to 1.0 (e.g. 4095 for 12-bit or 65535 for 16-bit data); "
        "only uint8 (255) and float (used as is) have a default"
    )


def dtype_ranges(dtypes: Mapping[str, str], configured: PixelRange) -> float | dict[str, float]:
    """The scaling of images of ``dtypes`` (dtype name -> an example row): one value for a
    single dtype, else a value per dtype; one DataError naming each dtype without one."""
    if len(dtypes) > 1 and configured is not None and not isinstance(configured, Mapping):
        listing = ", ".join(f"{dtype} (e.g. {example})" for dtype, example in dtypes.items())
        raise DataError(
            f"data_source.pixel_range: one value ({configured:g}) for images of several dtypes, "
            f'{listing}; give it per dtype, e.g. {{"uint16": 4095}} (uint8 images keep '
            "255 and float ones 1.0 unless named)"
        )
    ranges, problems = {}, []
    for dtype, example in dtypes.items():
        try:
            ranges[dtype] = resolve_pixel_range(dtype, configured, example)
        except DataError as error:
            problems.extend(error.problems)
    if problems:
        raise DataError(problems)
    return next(iter(ranges.values())) if len(ranges) == 1 else ranges


def scale(image: np.ndarray, pixel_range: float | Mapping[str, float]) -> np.ndarray:
    """The image as float32 in the 0-1 range (values above ``pixel_range`` scale above 1);
    with a value per dtype, the image's own dtype's."""
    if isinstance(pixel_range, Mapping):
        pixel_range = resolve_pixel_range(image.dtype, pixel_range)
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
