"""Polygons across scene borders (``DIR/mosaic.gpkg``): a region cut by the border of two
scenes on one pixel grid is one polygon there; a scene on another grid is kept apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely
from rasterio.transform import Affine

from landseg.maps.mosaic_vectors import grid_groups, write_mosaic_vectors
from landseg.maps.vectorize import vectorize
from tests.helpers import TRANSFORM, write_scene

NAMES = ["background", "field", "pond", "house"]
PIXEL_AREA = 0.25


def polygons(gpkg: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, _, wkb, (ids, names) = pyogrio.raw.read(gpkg, columns=["class_id", "class_name"])
    return shapely.from_wkb(wkb), np.asarray(ids), np.asarray(names)


def test_a_region_cut_by_a_scene_border_is_one_polygon_in_the_mosaic(tmp_path: Path) -> None:
    a = np.zeros((10, 8), dtype=np.uint8)  # a: columns 0-7; b: columns 8-15 of one grid
    b = np.zeros((10, 8), dtype=np.uint8)
    a[2:6, 5:8] = 1  # the field: 12 pixels in a, 16 in b, across the border
    b[2:6, 0:4] = 1
    a[7:9, 1:3] = 2  # a pond inside a: kept as it is
    a[0, 7] = b[1, 0] = 3  # two houses meeting at a pixel corner on the border: two polygons
    c = np.full((6, 6), 1, dtype=np.uint8)  # on a grid a quarter of a pixel off: apart
    scenes = []
    for name, pixels, transform in (
        ("a", a, TRANSFORM),
        ("b", b, TRANSFORM @ Affine.translation(8, 0)),
        ("c", c, TRANSFORM @ Affine.translation(20.25, 0)),
    ):
        raster = write_scene(tmp_path / f"{name}.tif", pixels[None], transform)
        vectorize(raster, raster.with_suffix(".gpkg"), NAMES)
        scenes.append(raster)

    groups = grid_groups(scenes)
    assert groups.main == scenes[:2] and groups.apart == scenes[2:]
    assert groups.line() == (
        "1 scene(s) on another grid than a, kept apart (their own files keep their polygons): "
        "c (another pixel grid (not a whole number of pixels off))"
    )
    result = write_mosaic_vectors(tmp_path, [(r, r.with_suffix(".gpkg")) for r in groups.main])
    assert result is not None and result.destination == tmp_path / "mosaic.gpkg"

    geometries, ids, names = polygons(tmp_path / "mosaic.gpkg")
    assert sorted(ids.tolist()) == [0, 1, 2, 3, 3]  # the background is one polygon too
    assert [names[ids == k][0] for k in (0, 1, 2, 3)] == NAMES
    field = geometries[ids == 1][0]
    halves = [polygons(tmp_path / f"{n}.gpkg") for n in "ab"]
    assert [int((h[1] == 1).sum()) for h in halves] == [1, 1]
    half_areas = [float(shapely.area(h[0][h[1] == 1][0])) for h in halves]
    assert shapely.area(field) / PIXEL_AREA == sum(half_areas) / PIXEL_AREA == 28.0  # exact
    assert shapely.equals(field, shapely.box(*(TRANSFORM @ (5, 2)), *(TRANSFORM @ (12, 6))))
    assert len(shapely.get_coordinates(field)) == 5  # canonical: no vertex left on the border
    pond = geometries[ids == 2][0]
    assert shapely.equals(pond, halves[0][0][halves[0][1] == 2][0])
    assert shapely.area(geometries[ids == 3]).tolist() == [PIXEL_AREA, PIXEL_AREA]
    total = sum(float(shapely.area(g)) for g in geometries) / PIXEL_AREA
    assert total == 2 * 10 * 8
    assert result.polygons == 5 and result.joined == 2  # field and background: 2 halves each


def test_with_simplify_a_region_cut_by_a_border_is_merged_then_simplified(tmp_path: Path) -> None:
    """Each scene's file is simplified on its own: there the 1-pixel neck that joins two
    fields across the border is gone on both sides, and the halves no longer touch. The
    mosaic merges the regions traced again, then simplifies: one polygon, the one the whole
    area makes in a single scene."""
    whole = np.zeros((12, 24), dtype=np.uint8)
    whole[2:10, 2:9] = whole[2:10, 15:22] = 1  # two fields ...
    whole[5, 9:15] = 1  # ... joined by a neck 1 pixel high, across the border at column 12
    names = NAMES[:2]
    scenes = []
    for name, dx in (("a", 0), ("b", 12)):
        raster = write_scene(
            tmp_path / f"{name}.tif",
            whole[None, :, dx : dx + 12],
            TRANSFORM @ Affine.translation(dx, 0),
        )
        vectorize(raster, raster.with_suffix(".gpkg"), names, simplify=0.6)
        scenes.append((raster, raster.with_suffix(".gpkg")))
    halves = [polygons(gpkg) for _, gpkg in scenes]
    assert not shapely.intersects(*(h[0][h[1] == 1][0] for h in halves))  # apart, simplified

    result = write_mosaic_vectors(tmp_path, scenes, simplify=0.6)
    assert result is not None and result.joined == 2  # the field's halves and the background's
    geometries, ids, _ = polygons(tmp_path / "mosaic.gpkg")
    one = write_scene(tmp_path / "whole" / "one.tif", whole[None])
    vectorize(one, one.with_suffix(".gpkg"), names, simplify=0.6)
    alone, alone_ids, _ = polygons(one.with_suffix(".gpkg"))
    assert (ids == 1).sum() == 1
    assert shapely.equals(geometries[ids == 1][0], alone[alone_ids == 1][0])
    assert shapely.area(geometries[ids == 1][0]) / PIXEL_AREA == 118.0
