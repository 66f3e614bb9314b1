"""Pixel range by dtype, scaling to 0-1, mean/std."""

from __future__ import annotations

import numpy as np
import pytest

from landseg.config.schema import NormalizationWeights, SplitStats
from landseg.core.errors import DataError
from landseg.data.normalization import resolve_pixel_range, scale, standardize


@pytest.mark.parametrize(
    ("dtype", "configured", "expected"),
    [
        ("uint8", None, 255.0),
        ("float32", None, 1.0),
        ("float64", None, 1.0),
        ("uint8", 100, 100.0),
        ("uint16", 4095, 4095.0),
        ("float32", 255, 255.0),
    ],
)
def test_pixel_range(dtype: str, configured: float | None, expected: float) -> None:
    assert resolve_pixel_range(dtype, configured) == expected


@pytest.mark.parametrize("dtype", ["uint16", "int16", "uint32", "int32", "int8"])
def test_other_integers_need_pixel_range(dtype: str) -> None:
    with pytest.raises(DataError, match=rf"data_source.pixel_range .* {dtype} .*scene.tif"):
        resolve_pixel_range(dtype, None, "scene.tif")


def test_scale_and_standardize() -> None:
    image = np.array([[[0, 255]], [[51, 102]]], np.uint8)
    scaled = scale(image, 255.0)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[[0, 1]], [[0.2, 0.4]]], rtol=1e-6)
    stats = SplitStats(mean=[0.5, 0.2], std=[0.5, 0.1])
    np.testing.assert_allclose(standardize(scaled, stats), [[[-1, 1]], [[0, 2]]], rtol=1e-5)
    assert standardize(scaled, None) is scaled
    with pytest.raises(DataError, match="normalization_weights"):
        standardize(scaled[:1], stats)


def test_split_stats_fall_back_to_train() -> None:
    train = SplitStats(mean=[0.1], std=[0.2])
    weights = NormalizationWeights(train=train)
    assert weights.for_split("val") is train


def test_pixel_range_per_dtype_names_real_dtypes_and_positive_values() -> None:
    from pydantic import ValidationError

    from landseg.config.schema import DataSource

    base = {"train_file": "t.csv"}
    assert DataSource(**base, pixel_range={"uint16": 4095}).pixel_range == {"uint16": 4095}
    for bad, message in (
        ({"uint9": 4095}, "'uint9' is not a raster dtype"),
        ({"uint16": 0}, "greater than 0"),
        (-1, "greater than 0"),
    ):
        with pytest.raises(ValidationError, match=message):
            DataSource(**base, pixel_range=bad)
    per_dtype = {"uint16": 4095.0}
    assert resolve_pixel_range("uint16", per_dtype) == 4095.0
    assert resolve_pixel_range("uint8", per_dtype) == 255.0  # not named: its default
    image = np.full((1, 2, 2), 4095, np.uint16)
    np.testing.assert_array_equal(scale(image, {"uint16": 4095.0, "uint8": 255.0}), 1.0)
