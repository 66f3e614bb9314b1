"""The data checks of scene rows: every bad row named in one pass, exit 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from landseg.core.errors import DataError
from landseg.core.files import write_geotiff
from landseg.data.checks import check_data
from tests.helpers import run_cli

shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_400.0)
FAR = Affine(10.0, 0, 600_000.0, 0, -10.0, 5_000_400.0)  # 100 km east: overlaps nothing
CLASSES = ["field", "forest"]


def image(path: Path, height: int = 40, width: int = 40, bands: int = 3, dtype: str = "uint8"):
    write_geotiff(path, np.ones((bands, height, width), dtype=dtype), crs=UTM, transform=TRANSFORM)
    return path.name


def vector(path: Path, values: list, *, crs: CRS | None = UTM, name: str = "cls", at=TRANSFORM):
    x0, y0 = at @ (2, 2)
    x1, y1 = at @ (20, 20)
    geometry = np.array(
        [shapely.to_wkb(shapely.geometry.box(x0, y1, x1, y0))] * len(values), dtype=object
    )
    pyogrio.raw.write(
        path,
        geometry,
        [np.asarray(values)],
        [name],
        crs=crs.to_wkt() if crs else None,
        geometry_type="Polygon",
    )
    return path.name


def config(tmp_path: Path, rows: list[str], **data_source) -> Path:
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    good = f"{image(tmp_path / 'val.tif')},{vector(tmp_path / 'val.gpkg', ['forest'])}"
    (tmp_path / "val.csv").write_text(good + "\n")
    path = tmp_path / "config.json"
    source = {
        "train_file": "train.csv",
        "val_file": "val.csv",
        "class_labels": CLASSES,
        "label_field": "cls",
        "windows": {"size": 16, "samples_per_epoch": 4},
    } | data_source
    body = {
        "data_source": source,
        "train_setup": {"model_name": "unet", "batch_size": 2},
        "output_setup": {"output_folder": str(tmp_path / "out")},
        "device_setup": {"num_workers": 0},
    }
    path.write_text(json.dumps(body))
    return path


def test_good_scene_rows_give_the_window_summary(tmp_path: Path) -> None:
    from landseg.config.load import load_config

    rows = [f"{image(tmp_path / 'a.tif', 50, 40)},{vector(tmp_path / 'a.gpkg', [0, 'forest'])}"]
    summary = check_data(load_config(config(tmp_path, rows)))
    assert summary.patch_size == (16, 16) and summary.n_classes == 2
    assert summary.split_sizes == {"train": 4, "val": 9}  # val: a 40x40 scene, 3x3 windows
    assert summary.mask_kind == "index" and summary.n_image_bands == 3
    assert summary.report.startswith("checked 2 scene rows in 2 CSV files")
    assert "windows of 16 px: train reads 4 random windows per epoch" in summary.report


def test_every_bad_scene_row_is_named_in_one_pass(tmp_path: Path, capsys) -> None:
    write_geotiff(
        tmp_path / "far.tif", np.zeros((40, 40), np.uint8), crs=UTM, transform=FAR, nodata=255
    )
    vector(tmp_path / "aoi_far.gpkg", [1], at=FAR)
    rows = [
        f"{image(tmp_path / 'i1.tif')},{vector(tmp_path / 'nocrs.gpkg', [0], crs=None)}",
        f"{image(tmp_path / 'i2.tif')},{vector(tmp_path / 'field.gpkg', [0], name='kind')}",
        f"{image(tmp_path / 'i3.tif')},{vector(tmp_path / 'meadow.gpkg', ['meadow'])}",
        f"{image(tmp_path / 'i4.tif')},{vector(tmp_path / 'ok.gpkg', [1])},aoi_far.gpkg",
        f"{image(tmp_path / 'small.tif', 10, 40)},ok.gpkg",
        f"{image(tmp_path / 'i6.tif')},far.tif",
        f"{image(tmp_path / 'bands.tif', bands=4)},ok.gpkg",
    ]
    path = config(tmp_path, rows)
    expected = [
        "row 1: " + str(tmp_path / "nocrs.gpkg") + ": vector file has no CRS",
        "row 2: " + str(tmp_path / "field.gpkg") + ": data_source.label_field 'cls' is not",
        "row 3: " + str(tmp_path / "meadow.gpkg") + ": 1 polygons have a cls that is no class",
        f"row 4: AOI {tmp_path / 'aoi_far.gpkg'} does not overlap image {tmp_path / 'i4.tif'}",
        f"row 5: data_source.windows.size 16 is larger than image {tmp_path / 'small.tif'}",
        f"row 6: label raster {tmp_path / 'far.tif'} does not overlap image",
        "images have different band counts: 3 (e.g.",
    ]
    from landseg.config.load import load_config

    with pytest.raises(DataError) as error:
        check_data(load_config(path))
    text = "\n".join(error.value.problems)
    for line in expected:
        assert line in text, line
    code, output = run_cli(["validate", "-c", str(path)], capsys)
    assert code == 2 and "row 6: label raster" in output
    assert not (tmp_path / "out").exists()


def test_a_dtype_without_known_scaling_is_refused(tmp_path: Path) -> None:
    from landseg.config.load import load_config

    rows = [f"{image(tmp_path / 'u16.tif', dtype='uint16')},{vector(tmp_path / 'a.gpkg', [0])}"]
    (tmp_path / "v16.tif").write_bytes((tmp_path / "u16.tif").read_bytes())
    path = config(tmp_path, rows)
    (tmp_path / "val.csv").write_text("v16.tif,a.gpkg\n")
    with pytest.raises(DataError, match="pixel_range"):
        check_data(load_config(path))


def test_scenes_of_two_dtypes_are_scaled_each_by_its_own_range(tmp_path: Path, capsys) -> None:
    """A uint8 and a uint16 scene: accepted with a value per dtype, each sample scaled by its
    own; one number for both, or a dtype without a value, refused naming the row (exit 2)."""
    from landseg.config.load import load_config
    from landseg.data.csvfiles import read_pairs
    from landseg.data.scenes import label_settings, scene_dataset

    labels = vector(tmp_path / "a.gpkg", ["forest"])
    rows = [
        f"{image(tmp_path / 'u8.tif')},{labels}",
        f"{image(tmp_path / 'u16.tif', dtype='uint16')},{labels}",
    ]
    path = config(tmp_path, rows, pixel_range={"uint16": 4095})
    loaded = load_config(path)
    summary = check_data(loaded)
    assert summary.pixel_range == {"uint8": 255.0, "uint16": 4095.0}
    assert summary.image_dtype == "mixed"
    grid = scene_dataset(
        read_pairs(tmp_path / "train.csv"),
        size=16,
        stride=16,
        samples_per_epoch=None,
        max_nodata=0.5,
        settings=label_settings(loaded, summary),
        image_bands=None,
        mask_bands=None,
        n_classes=2,
        pixel_range=summary.pixel_range,
    )
    assert len(grid) == 18  # 3x3 windows of each 40x40 scene, every pixel 1
    assert float(grid[0]["image"].max()) == pytest.approx(1 / 255, rel=1e-6)
    assert float(grid[9]["image"].max()) == pytest.approx(1 / 4095, rel=1e-6)

    for pixel_range, culprit in (
        (4095, "one value (4095) for images of several dtypes, uint8 (e.g."),
        ({"uint8": 255}, "gives no value for uint16 images (e.g. "),
    ):
        path = config(tmp_path, rows, pixel_range=pixel_range)
        code, output = run_cli(["validate", "-c", str(path)], capsys)
        assert code == 2 and culprit in output, output
        assert "train.csv, row 2" in output  # the uint16 scene's row
    assert not (tmp_path / "out").exists()


def test_predicting_scene_rows_while_training_is_refused(tmp_path: Path, capsys) -> None:
    rows = [f"{image(tmp_path / 'a.tif')},{vector(tmp_path / 'a.gpkg', [0])}"]
    path = config(tmp_path, rows)
    body = json.loads(path.read_text())
    body["data_source"]["test_file"] = "val.csv"
    body["output_setup"]["get_prediction"] = True
    path.write_text(json.dumps(body))
    code, output = run_cli(["validate", "-c", str(path)], capsys)
    assert code == 2 and "get_prediction: predicting the test split's scene rows" in output
