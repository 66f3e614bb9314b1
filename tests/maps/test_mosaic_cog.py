"""``--mosaic-cog``: the mosaic of a job's rasters as one COG, pixels those of the VRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from landseg.maps.mosaic import write_mosaic, write_mosaic_cog
from tests.helpers import TRANSFORM, write_scene

COLOURS = {0: (0, 0, 255, 255), 1: (0, 160, 0, 255), 2: (200, 200, 0, 255)}


def test_the_mosaic_as_one_cog_has_the_pixels_of_the_vrt(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rasters = []  # a and b side by side, c below with a gap: nodata between
    for name, (dx, dy), (height, width) in (("a", (0, 0), (300, 200)),
                                            ("b", (200, 0), (300, 170)),
                                            ("c", (40, 330), (150, 290))):  # fmt: skip
        classes = rng.integers(0, 3, (1, height, width)).astype(np.uint8)
        classes[0, :5, :7] = 255
        path = write_scene(
            tmp_path / f"{name}.tif", classes, TRANSFORM @ Affine.translation(dx, dy)
        )
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(
                landseg_type="classes", landseg_class_labels=json.dumps(["w", "v", "s"])
            )
            dst.write_colormap(1, COLOURS)
        rasters.append(path)
    write_mosaic(tmp_path, rasters)

    cog = write_mosaic_cog(tmp_path, rasters[0])
    assert cog == tmp_path / "mosaic.tif"
    with rasterio.open(tmp_path / "mosaic.vrt") as vrt, rasterio.open(cog) as out:
        assert (out.width, out.height) == (vrt.width, vrt.height) == (370, 480)
        assert np.array_equal(out.read(), vrt.read())
        assert (out.crs, out.transform, out.nodata) == (vrt.crs, vrt.transform, 255)
        structure = out.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert out.block_shapes[0] == (256, 256) and out.overviews(1) == [2]
        assert out.colormap(1)[1] == COLOURS[1]
        assert out.tags()["landseg_type"] == "classes"
        full, half = out.read(1), out.read(1, out_shape=(240, 185))  # the overview
        assert np.array_equal(half, full[::2, ::2]) or np.array_equal(half, full[1::2, 1::2])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.tif", "b.tif", "c.tif", "mosaic.tif", "mosaic.vrt"
    ]  # fmt: skip
