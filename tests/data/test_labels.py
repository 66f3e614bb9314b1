"""Scene labels: polygons burnt and label rasters resampled onto an image window's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from landseg.core.errors import DataError
from landseg.core.files import write_geotiff
from landseg.data.labels import (
    aoi_inside,
    burn_labels,
    load_aoi,
    load_vector_labels,
    read_label_window,
)

pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")

UTM = CRS.from_epsg(32633)
WGS84 = CRS.from_epsg(4326)
#: A 40 x 40 image of 10 m pixels in UTM zone 33N (near 15 E, 45 N).
TRANSFORM = Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_400.0)
LABELS = ["field", "forest", "water"]


def box(col0: float, row0: float, col1: float, row1: float) -> dict:
    """A rectangle in UTM metres from pixel edges of :data:`TRANSFORM`."""
    x0, y0 = TRANSFORM @ (col0, row0)
    x1, y1 = TRANSFORM @ (col1, row1)
    return shapely.geometry.mapping(shapely.geometry.box(x0, y1, x1, y0))


#: Overlapping polygons (the later wins) with their classes, in the image's CRS.
POLYGONS = [
    (box(2, 3, 20, 25), 1),
    (box(10, 10, 35, 30), 2),  # overlaps the first: burnt over it
    (box(0, 32, 40, 40), 0),
]


def write_vector(path: Path, shapes: list[dict], values: list, crs: CRS | None, **fields) -> Path:
    geometry = np.array([shapely.to_wkb(shapely.geometry.shape(s)) for s in shapes], dtype=object)
    names = list(fields) or ["cls"]
    arrays = [np.asarray(v) for v in (fields.values() if fields else [values])]
    pyogrio.raw.write(
        path,
        geometry,
        arrays,
        names,
        crs=crs.to_wkt() if crs else None,
        geometry_type="Polygon",
    )
    return path


def test_burnt_labels_equal_an_independent_rasterize_from_another_crs(tmp_path: Path) -> None:
    """Polygons stored in EPSG:4326 are burnt on a UTM window exactly as the same polygons,
    drawn in UTM, rasterised directly; the later polygon wins where two overlap."""
    in_wgs84 = [transform_geom(UTM, WGS84, shape) for shape, _ in POLYGONS]
    path = write_vector(tmp_path / "labels.gpkg", in_wgs84, [LABELS[c] for _, c in POLYGONS], WGS84)
    labels = load_vector_labels(
        path, UTM, field="cls", layer=None, class_labels=LABELS, n_classes=3
    )
    window = TRANSFORM @ Affine.translation(4, 6)  # a window, not the scene's origin
    burnt = burn_labels(labels, window, (30, 32), background=-1, all_touched=False)
    expected = rasterize(
        [(shape, value) for shape, value in POLYGONS],
        out_shape=(30, 32),
        transform=window,
        fill=-1,
        dtype="int32",
    )
    np.testing.assert_array_equal(burnt, expected)
    assert burnt.dtype == np.int64
    assert (burnt[10 - 6, 12 - 4]) == 2  # in both polygons: the later one's class
    assert set(np.unique(burnt)) == {-1, 0, 1, 2}
    for col, row in ((0, 0), (36, 35), (20, 27)):  # windows that reach a few polygons only
        corner = TRANSFORM @ Affine.translation(col, row)
        expected = rasterize(POLYGONS, out_shape=(5, 4), transform=corner, fill=-1)
        assert len(labels.near(corner, (5, 4))) < len(POLYGONS)
        np.testing.assert_array_equal(
            burn_labels(labels, corner, (5, 4), background=-1, all_touched=False), expected
        )


def test_label_field_as_index_background_and_all_touched(tmp_path: Path) -> None:
    shapes = [box(2.3, 2.3, 5.2, 5.2)]
    path = write_vector(tmp_path / "l.geojson", shapes, [2], UTM)
    labels = load_vector_labels(
        path, UTM, field="cls", layer=None, class_labels=LABELS, n_classes=3
    )
    centres = burn_labels(labels, TRANSFORM, (8, 8), background=0, all_touched=False)
    touched = burn_labels(labels, TRANSFORM, (8, 8), background=0, all_touched=True)
    assert (centres == 2).sum() == 9 and (centres == 0).sum() == 64 - 9
    assert (touched == 2).sum() == 16


@pytest.mark.parametrize(
    ("crs", "field", "value", "expected"),
    [
        (None, "cls", "field", "has no CRS"),
        (UTM, "kind", "field", "'kind' is not an attribute"),
        (UTM, "cls", "meadow", "'meadow'"),
        (UTM, "cls", 7, "7"),
    ],
)
def test_bad_vector_labels_name_the_file(tmp_path: Path, crs, field, value, expected) -> None:
    path = write_vector(tmp_path / "bad.gpkg", [box(0, 0, 4, 4)], [value], crs)
    with pytest.raises(DataError, match=expected) as error:
        load_vector_labels(path, UTM, field=field, layer=None, class_labels=LABELS, n_classes=3)
    assert str(path) in str(error.value)


def test_aoi_marks_the_pixels_inside(tmp_path: Path) -> None:
    path = write_vector(
        tmp_path / "aoi.fgb", [transform_geom(UTM, WGS84, box(0, 0, 10, 20))], [0], WGS84
    )
    inside = aoi_inside(load_aoi(path, UTM), TRANSFORM, (40, 40))
    assert inside[:20, :10].all() and inside.sum() == 200


def test_label_raster_on_another_grid_is_resampled_nearest(tmp_path: Path) -> None:
    """A class raster of 20 m pixels, shifted by one image pixel, read onto a 10 m window."""
    coarse = np.arange(100, dtype=np.uint8).reshape(10, 10) % 3
    coarse[0, 0] = 255
    origin = Affine(20.0, 0, 500_010.0, 0, -20.0, 5_000_400.0)
    path = tmp_path / "labels.tif"
    write_geotiff(path, coarse, crs=UTM, transform=origin, nodata=255)
    classes = read_label_window(
        path, UTM, TRANSFORM, (12, 12), mask_bands=None, n_classes=3, ignore_index=None
    )
    # centre of image pixel (r, c): x = 500005 + 10c, y = 5000395 - 10r,
    # in coarse pixel ((10r + 5) // 20, (10c - 5) // 20)
    expected = np.full((12, 12), -1, dtype=np.int64)
    for r in range(12):
        for c in range(1, 12):
            value = coarse[(10 * r + 5) // 20, (10 * c - 5) // 20]
            expected[r, c] = -1 if value == 255 else value
    np.testing.assert_array_equal(classes, expected)


def test_label_raster_on_the_image_grid_is_read_as_is(tmp_path: Path) -> None:
    onehot = np.zeros((3, 40, 40), dtype=np.uint8)
    onehot[1, :, :20] = 1
    onehot[2, :, 20:] = 1
    onehot[:, 0, :] = 0  # unlabelled
    path = tmp_path / "onehot.tif"
    write_geotiff(path, onehot, crs=UTM, transform=TRANSFORM)
    window = TRANSFORM @ Affine.translation(15, 0)
    classes = read_label_window(
        path, UTM, window, (8, 10), mask_bands=None, n_classes=3, ignore_index=None
    )
    assert (classes[0] == -1).all()
    assert (classes[1:, :5] == 1).all() and (classes[1:, 5:] == 2).all()
