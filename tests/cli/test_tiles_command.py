"""``landseg tiles``: the scene grid written as ODEON's tiles, read back as the same samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from landseg.cli.main import main
from landseg.core.files import write_geotiff
from landseg.data.csvfiles import read_pairs
from landseg.data.dataset import SegmentationDataset
from landseg.data.scenes import LabelSettings, scene_dataset
from tests.helpers import run_cli

shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")

UTM = CRS.from_epsg(32633)
WGS84 = CRS.from_epsg(4326)
TRANSFORM = Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_400.0)
CLASSES = ["field", "forest", "water"]


def polygons(path: Path, boxes: list[tuple[int, int, int, int]], values: list, crs: CRS) -> str:
    from rasterio.warp import transform_geom

    shapes = []
    for col0, row0, col1, row1 in boxes:
        x0, y0 = TRANSFORM @ (col0, row0)
        x1, y1 = TRANSFORM @ (col1, row1)
        shape = shapely.geometry.mapping(shapely.geometry.box(x0, y1, x1, y0))
        shapes.append(shapely.to_wkb(shapely.geometry.shape(transform_geom(UTM, crs, shape))))
    pyogrio.raw.write(
        path,
        np.array(shapes, dtype=object),
        [np.asarray(values)],
        ["cls"],
        crs=crs.to_wkt(),
        geometry_type="Polygon",
    )
    return path.name


def scene(folder: Path, name: str, height: int, width: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(1, 256, (3, height, width)).astype(np.uint8)
    pixels[:, :4, :6] = 0  # nodata
    write_geotiff(folder / name, pixels, crs=UTM, transform=TRANSFORM, nodata=0)
    return name


def test_tiles_read_back_as_the_scene_grid(tmp_path: Path, capsys) -> None:
    labels = polygons(tmp_path / "l.gpkg", [(2, 2, 30, 20), (10, 12, 38, 40)], [1, "water"], WGS84)
    aoi = polygons(tmp_path / "aoi.geojson", [(0, 0, 36, 40)], [0], UTM)
    (tmp_path / "train.csv").write_text(f"{scene(tmp_path, 'a.tif', 40, 40, 1)},{labels},{aoi}\n")
    (tmp_path / "val.csv").write_text(f"{scene(tmp_path, 'b.tif', 16, 40, 2)},{labels}\n")
    source = {
        "train_file": "train.csv",
        "val_file": "val.csv",
        "class_labels": CLASSES,
        "label_field": "cls",
        "label_background": "field",
        "windows": {"size": 16, "stride": 12},
    }
    body = {
        "data_source": source,
        "train_setup": {"model_name": "unet", "batch_size": 2},
        "output_setup": {"output_folder": str(tmp_path / "runs")},
    }
    config = tmp_path / "c.json"
    config.write_text(json.dumps(body))
    out = tmp_path / "tiles"
    assert main(["tiles", "-c", str(config), "--output", str(out)]) == 0
    output = capsys.readouterr().out
    assert f"train: 9 tiles, {out / 'train.csv'}" in output  # 40 px: starts 0, 12, 24
    assert f"val: 3 tiles, {out / 'val.csv'}" in output
    settings = LabelSettings(None, None, 3, tuple(CLASSES), label_field="cls", background="field")
    options = {"image_bands": None, "mask_bands": None, "n_classes": 3, "pixel_range": 255.0}
    for split in ("train", "val"):
        tiles = SegmentationDataset(read_pairs(out / f"{split}.csv"), **options)
        grid = scene_dataset(
            read_pairs(tmp_path / f"{split}.csv"),
            size=16,
            stride=12,
            samples_per_epoch=None,
            max_nodata=0.5,
            settings=settings,
            **options,
        )
        assert len(tiles) == len(grid)
        for i in range(len(grid)):
            torch.testing.assert_close(tiles[i], grid[i], rtol=0, atol=0)
        labelled = sum(int((grid[i]["mask"] >= 0).sum()) for i in range(len(grid)))
        assert labelled > 0
    with rasterio.open(out / "train" / "img" / "a_12_24.tif") as tile:
        assert tile.crs == UTM and tile.nodata == 0 and tile.count == 3
        assert tile.transform == TRANSFORM @ Affine.translation(24, 12)
    with rasterio.open(out / "train" / "msk" / "a_12_24.tif") as mask:
        assert mask.count == 3 and mask.dtypes[0] == "uint8"

    code, output = run_cli(["tiles", "-c", str(config), "--output", str(out)], capsys)
    assert code == 2 and "not an empty folder" in output
