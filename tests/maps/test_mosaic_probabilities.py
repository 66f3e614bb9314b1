"""``DIR/mosaic.vrt`` over per-class probability rasters (``--type float32`` or ``uint8``):
one band per class, named, nodata kept, so a scene's nodata never hides its neighbour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from landseg.maps.mosaic import write_areas, write_mosaic, write_mosaic_cog
from tests.helpers import TRANSFORM, write_scene

LABELS = ["water", "trees", "roofs"]


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_a_mosaic_of_probabilities_has_a_band_per_class(tmp_path: Path, dtype: str) -> None:
    nodata = math.nan if dtype == "float32" else 255
    rng = np.random.default_rng(4)
    scenes = {}  # b overlaps a's last 3 columns with 3 columns of nodata: a shows there
    for name, dx, width in (("a", 0, 20), ("b", 17, 15)):
        values = rng.random((3, 10, width)).astype(np.float32)
        if dtype == "uint8":
            values = np.rint(values * 254).astype(np.uint8)
        values[:, 0, :3] = nodata  # a nodata corner in each
        if name == "b":
            values[:, :, :3] = nodata
        path = write_scene(tmp_path / f"{name}.tif", values, TRANSFORM @ Affine.translation(dx, 0),
                           nodata=nodata, dtype=dtype)  # fmt: skip
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(landseg_type=dtype, landseg_class_labels=json.dumps(LABELS))
            for band, label in enumerate(LABELS, start=1):
                dst.set_band_description(band, label)
        scenes[name] = (values, dx)
    rasters = sorted(tmp_path.glob("*.tif"))
    vrt = write_mosaic(tmp_path, rasters)

    with rasterio.open(vrt) as mosaic:  # GDAL opens it: three bands, the classes' names
        assert (mosaic.count, mosaic.dtypes[0], mosaic.width, mosaic.height) == (3, dtype, 32, 10)
        assert mosaic.descriptions == tuple(LABELS)
        assert all(math.isnan(v) if dtype == "float32" else v == 255 for v in mosaic.nodatavals)
        whole = mosaic.read()
    np.testing.assert_array_equal(whole[:, :, :20], scenes["a"][0])
    np.testing.assert_array_equal(whole[:, :, 20:], scenes["b"][0][:, :, 3:])
    assert write_areas(tmp_path, rasters) is None  # no classes to count

    with rasterio.open(write_mosaic_cog(tmp_path, rasters[0])) as cog:
        np.testing.assert_array_equal(cog.read(), whole)
        assert cog.descriptions == tuple(LABELS) and cog.tags()["landseg_type"] == dtype
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
