"""Class raster -> GeoPackage: regions across blocks, areas, options, fields, CRS, atomic write."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine

from landseg.core.errors import LandsegError
from landseg.core.files import write_geotiff
from landseg.maps.vectorize import VectorSummary, vectorize

UTM = "EPSG:32631"
TRANSFORM = Affine(0.5, 0.0, 640_003.0, 0.0, -0.5, 6_860_001.0)
PIXEL_AREA = 0.25
NAMES = ["background", "field", "pond", "hedge", "house"]
NODATA = 255


# ---------------------------------------------------------------------------- helpers


def scene() -> np.ndarray:
    """200 rows x 300 columns; with 64-pixel blocks every region below crosses a block border.

    * class 1: a large field (rows 20-150, cols 40-200) holding class 2 (a pond, its hole) and
      a nodata hole;
    * class 3: a ring (a hedge) around a patch of background, crossing rows 128 and cols 256;
    * class 4: two squares touching only at the block corner (row 128, col 64): two regions;
      and a staircase (for simplification) across col 192;
    * speckles of classes 0-4 here and there, and a nodata strip at the top right.
    """
    rng = np.random.default_rng(12)
    classes = np.zeros((200, 300), dtype=np.uint8)
    classes[20:150, 40:200] = 1
    classes[60:100, 100:140] = 2  # crosses row 64 and col 128
    classes[30:34, 60:70] = NODATA  # crosses row 32 (block 32)
    classes[120:190, 220:290] = 3
    classes[125:185, 225:285] = 0  # the ring's inside, a region of its own
    classes[118:128, 54:64] = 4
    classes[128:138, 64:74] = 4
    for step in range(30):
        classes[155 + step, 170 + step : 215] = 4  # staircase edge
    speckles = rng.random(classes.shape) < 0.004
    classes[speckles] = rng.integers(0, 5, int(speckles.sum()))
    classes[0:10, 250:300] = NODATA
    return classes


def write_scene(path: Path, classes: np.ndarray, crs: str | None = UTM) -> Path:
    write_geotiff(
        path,
        classes,
        crs=crs,
        transform=TRANSFORM if crs else None,
        nodata=NODATA,
    )
    return path


def read_back(path: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(meta, geometries, class_id, class_name) of a GeoPackage, without geopandas."""
    meta, _, wkb, (ids, names) = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(wkb), ids, names


def normalised(path: Path) -> dict[int, list[str]]:
    """Per class, the sorted WKT of its normalised polygons."""
    _, geometries, ids, _ = read_back(path)
    found: dict[int, list[str]] = {}
    for class_id, wkt in zip(
        ids.tolist(), shapely.to_wkt(shapely.normalize(geometries)), strict=True
    ):
        found.setdefault(class_id, []).append(wkt)
    return {class_id: sorted(wkts) for class_id, wkts in found.items()}


def areas(path: Path) -> dict[int, float]:
    _, geometries, ids, _ = read_back(path)
    return {k: float(shapely.area(geometries[ids == k]).sum()) for k in np.unique(ids).tolist()}


def of_class(
    geometries: np.ndarray, ids: np.ndarray, class_id: int, larger_than: float = 0.0
) -> np.ndarray:
    return geometries[(ids == class_id) & (shapely.area(geometries) > larger_than)]


@pytest.fixture
def scene_tif(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif", scene())


# ---------------------------------------------------------------------------- regions


def test_output_does_not_depend_on_the_block_size(scene_tif: Path, tmp_path: Path) -> None:
    outputs = {
        size: vectorize(scene_tif, tmp_path / f"b{size}.gpkg", NAMES, block_size=size)
        for size in (64, 1024, 37)
    }
    reference = normalised(tmp_path / "b1024.gpkg")
    assert normalised(tmp_path / "b64.gpkg") == reference
    assert normalised(tmp_path / "b37.gpkg") == reference
    assert outputs[64].polygons == outputs[1024].polygons == outputs[37].polygons

    _, geometries, ids, _ = read_back(tmp_path / "b64.gpkg")
    assert shapely.is_valid(geometries).all()
    assert set(shapely.get_type_id(geometries).tolist()) == {3}  # Polygon, never Multi
    # the field crosses four 64-pixel blocks and is one polygon, with the pond and nodata holes
    field = shapely.box(*TRANSFORM @ (40, 150), *TRANSFORM @ (200, 20))
    (big,) = of_class(geometries, ids, 1, larger_than=0.5 * field.area)
    assert shapely.get_num_interior_rings(big) >= 2
    # the ring is one polygon with one hole (plus the speckles inside it)
    ring = of_class(geometries, ids, 3, larger_than=500 * PIXEL_AREA)
    assert len(ring) == 1 and shapely.get_num_interior_rings(ring[0]) >= 1
    # squares that touch only at a block corner are two regions
    corner = shapely.Point(*(TRANSFORM @ (64, 128)))
    assert shapely.touches(of_class(geometries, ids, 4), corner).sum() == 2


def test_random_rasters_are_block_size_invariant(tmp_path: Path) -> None:
    """Diagonal contacts, holes touching shells, regions across many small blocks."""
    rng = np.random.default_rng(3)
    for seed in range(2):
        coarse = rng.integers(0, 3, (12, 9))
        classes = np.kron(coarse, np.ones((6, 6), dtype=np.int64))[:70, :50].astype(np.uint8)
        noise = rng.random(classes.shape) < 0.2
        classes[noise] = rng.integers(0, 3, int(noise.sum()))
        classes[rng.random(classes.shape) < 0.03] = NODATA
        tif = write_scene(tmp_path / f"r{seed}.tif", classes)
        results = []
        for size in (5, 16, 1024):
            destination = tmp_path / f"r{seed}_{size}.gpkg"
            vectorize(tif, destination, NAMES[:3], block_size=size)
            results.append(normalised(destination))
        assert results[0] == results[1] == results[2]


def test_areas_equal_pixel_counts(scene_tif: Path, tmp_path: Path) -> None:
    classes = scene()
    summary = vectorize(scene_tif, tmp_path / "scene.gpkg", NAMES, block_size=64)
    written = areas(tmp_path / "scene.gpkg")
    for class_id in range(len(NAMES)):
        expected = np.count_nonzero(classes == class_id) * PIXEL_AREA
        assert written[class_id] == pytest.approx(expected, rel=1e-3)
        assert summary.area[class_id] == pytest.approx(expected, rel=1e-3)
        assert summary.pixels[class_id] == np.count_nonzero(classes == class_id)
    assert summary.polygons == dict(Counter(read_back(tmp_path / "scene.gpkg")[2].tolist()))


def test_nodata_makes_no_polygon(scene_tif: Path, tmp_path: Path) -> None:
    classes = scene()
    vectorize(scene_tif, tmp_path / "scene.gpkg", NAMES, block_size=64)
    _, geometries, _, _ = read_back(tmp_path / "scene.gpkg")
    covered = shapely.union_all(geometries)
    valid = np.count_nonzero(classes != NODATA)
    assert covered.area == pytest.approx(valid * PIXEL_AREA, rel=1e-9)
    nodata_pixel = shapely.Point(*(TRANSFORM @ (275.5, 5.5)))  # the strip at the top right
    hole_pixel = shapely.Point(*(TRANSFORM @ (65.5, 31.5)))  # nodata inside the field
    assert not covered.intersects(nodata_pixel)
    assert not covered.intersects(hole_pixel)


def test_a_raster_of_nodata_writes_an_empty_layer(tmp_path: Path) -> None:
    tif = write_scene(tmp_path / "empty.tif", np.full((20, 30), NODATA, dtype=np.uint8))
    summary = vectorize(tif, tmp_path / "empty.gpkg", NAMES)
    meta, geometries, _, _ = read_back(tmp_path / "empty.gpkg")
    assert len(geometries) == 0 and list(meta["fields"]) == ["class_id", "class_name"]
    assert summary.polygons == {}


# ---------------------------------------------------------------------------- the file


def test_fields_crs_and_layer(scene_tif: Path, tmp_path: Path) -> None:
    destination = tmp_path / "out" / "scene.gpkg"
    summary = vectorize(scene_tif, destination, NAMES)
    assert isinstance(summary, VectorSummary) and summary.destination == destination
    meta, geometries, ids, names = read_back(destination)
    assert list(meta["fields"]) == ["class_id", "class_name"]
    assert meta["ogr_types"] == ["OFTInteger", "OFTString"]
    assert meta["geometry_type"] == "Polygon"
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(32631)
    assert [layer for layer, _ in pyogrio.list_layers(destination)] == ["scene"]
    assert all(names[i] == NAMES[k] for i, k in enumerate(ids.tolist()))
    # in map coordinates: inside the raster's footprint
    xmin, ymin, xmax, ymax = shapely.total_bounds(geometries)
    assert (xmin, ymax) == pytest.approx(TRANSFORM @ (0, 0))
    assert (xmax, ymin) == pytest.approx(TRANSFORM @ (300, 200))
    assert summary.lines()[-1].startswith(f"{len(ids)} polygons -> ")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_raster_without_crs_is_written_in_pixel_coordinates(tmp_path: Path) -> None:
    classes = np.zeros((10, 12), dtype=np.uint8)
    classes[2:5, 3:9] = 1
    tif = write_scene(tmp_path / "plain.tif", classes, crs=None)
    summary = vectorize(tif, tmp_path / "plain.gpkg", NAMES)
    meta, geometries, ids, _ = read_back(tmp_path / "plain.gpkg")
    assert meta["crs"] is None and summary.crs is None
    (square,) = geometries[ids == 1]
    assert shapely.normalize(square).equals(shapely.box(3, 2, 9, 5))
    assert "no CRS" in summary.lines()[-1]


def test_the_write_is_atomic(scene_tif: Path, tmp_path: Path) -> None:
    folder = tmp_path / "vectors"
    vectorize(scene_tif, folder / "scene.gpkg", NAMES, block_size=64)
    assert sorted(p.name for p in folder.iterdir()) == ["scene.gpkg"]
    before = (folder / "scene.gpkg").read_bytes()
    # a class id without a name fails mid-way: no temporary left, the old file untouched
    with pytest.raises(LandsegError, match="class id 4 has no name"):
        vectorize(scene_tif, folder / "scene.gpkg", NAMES[:4], block_size=64)
    assert sorted(p.name for p in folder.iterdir()) == ["scene.gpkg"]
    assert (folder / "scene.gpkg").read_bytes() == before


# ---------------------------------------------------------------------------- options


def test_classes_keeps_only_those(scene_tif: Path, tmp_path: Path) -> None:
    summary = vectorize(scene_tif, tmp_path / "some.gpkg", NAMES, classes=[1, 3])
    _, _, ids, _ = read_back(tmp_path / "some.gpkg")
    assert set(ids.tolist()) == {1, 3} == set(summary.polygons)
    everything = normalised(tmp_path / "some.gpkg")
    vectorize(scene_tif, tmp_path / "all.gpkg", NAMES)
    full = normalised(tmp_path / "all.gpkg")
    assert everything == {1: full[1], 3: full[3]}
    with pytest.raises(LandsegError, match="--classes: 7 not among"):
        vectorize(scene_tif, tmp_path / "bad.gpkg", NAMES, classes=[1, 7])


def sieve_scene() -> np.ndarray:
    classes = np.zeros((40, 50), dtype=np.uint8)
    classes[:, 30:] = 1
    classes[10, 10:12] = 2  # a 2-pixel island in class 0: sieved away
    classes[20, 10:13] = 3  # 3 pixels: exactly min_area, kept
    classes[30, 5:7] = NODATA  # a small nodata area: neither grows nor swallows anything
    return classes


def test_min_area_sieves_small_regions_into_their_neighbours(tmp_path: Path) -> None:
    classes = sieve_scene()
    tif = write_scene(tmp_path / "sieve.tif", classes)
    min_area = 3 * PIXEL_AREA
    summary = vectorize(tif, tmp_path / "sieve.gpkg", NAMES, min_area=min_area, block_size=16)
    written = areas(tmp_path / "sieve.gpkg")
    assert 2 not in written and summary.sieved_pixels == 2
    assert written[3] == pytest.approx(3 * PIXEL_AREA)
    assert written[0] == pytest.approx((np.count_nonzero(classes == 0) + 2) * PIXEL_AREA)
    assert sum(written.values()) == pytest.approx(np.count_nonzero(classes != NODATA) * PIXEL_AREA)
    # the nodata pixels are still a hole
    _, geometries, _, _ = read_back(tmp_path / "sieve.gpkg")
    assert not shapely.union_all(geometries).intersects(shapely.Point(*(TRANSFORM @ (5.5, 30.5))))
    # the same whatever the block size
    vectorize(tif, tmp_path / "sieve2.gpkg", NAMES, min_area=min_area, block_size=1024)
    assert normalised(tmp_path / "sieve2.gpkg") == normalised(tmp_path / "sieve.gpkg")


def test_min_area_is_refused_on_a_geographic_crs(tmp_path: Path) -> None:
    tif = tmp_path / "degrees.tif"
    write_geotiff(
        tif,
        sieve_scene(),
        crs="EPSG:4326",
        transform=Affine(1e-5, 0, 2.0, 0, -1e-5, 48.0),
        nodata=NODATA,
    )
    with pytest.raises(LandsegError) as raised:
        vectorize(tif, tmp_path / "degrees.gpkg", NAMES, min_area=10.0)
    assert raised.value.problems == [
        f"--min-area is in map units squared: {tif} has a geographic CRS (degrees); "
        "reproject it first"
    ]
    assert not (tmp_path / "degrees.gpkg").exists()
    # without min_area a geographic raster is fine
    vectorize(tif, tmp_path / "degrees.gpkg", NAMES)
    assert CRS.from_user_input(read_back(tmp_path / "degrees.gpkg")[0]["crs"]).is_geographic


def test_simplify_reduces_vertices(scene_tif: Path, tmp_path: Path) -> None:
    vectorize(scene_tif, tmp_path / "exact.gpkg", NAMES)
    vectorize(scene_tif, tmp_path / "simple.gpkg", NAMES, simplify=1.0)
    _, exact, exact_ids, _ = read_back(tmp_path / "exact.gpkg")
    _, simple, simple_ids, _ = read_back(tmp_path / "simple.gpkg")
    assert len(simple) == len(exact) and (simple_ids == exact_ids).all()
    assert shapely.is_valid(simple).all()
    assert (
        shapely.get_num_coordinates(simple).sum() < 0.8 * shapely.get_num_coordinates(exact).sum()
    )
    # the staircase of class 4 is now a few straight edges
    stairs = of_class(exact, exact_ids, 4, larger_than=200 * PIXEL_AREA)
    simple_stairs = of_class(simple, simple_ids, 4, larger_than=200 * PIXEL_AREA)
    assert len(stairs) == len(simple_stairs) == 1
    before, after = shapely.get_num_coordinates([stairs[0], simple_stairs[0]])
    assert after < before / 3
    assert simple_stairs[0].area == pytest.approx(stairs[0].area, rel=0.05)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_area": 0.0}, "--min-area must be a positive area"),
        ({"simplify": -1.0}, "--simplify must be a tolerance >= 0"),
        ({"block_size": 0}, "block size must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(
    scene_tif: Path, tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(LandsegError, match=message) as raised:
        vectorize(scene_tif, tmp_path / "x.gpkg", NAMES, **options)
    assert len(raised.value.problems) == 1
    assert not (tmp_path / "x.gpkg").exists()
