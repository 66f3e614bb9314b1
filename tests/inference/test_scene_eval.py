"""``landseg evaluate --run --csv`` on scene rows equals the evaluation of the grid's tiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS

from landseg.cli.main import main
from landseg.core.files import write_geotiff
from tests.helpers import LABELS, read, run_cli, save_checkpoint, scene_pixels

shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")

UTM = CRS.from_epsg(32631)
TRANSFORM = Affine(0.5, 0.0, 640_000.0, 0.0, -0.5, 6_860_000.0)
WINDOWS = {"size": 16, "stride": 12}
LABEL_KEYS = {"label_field": "cls", "label_background": "vegetation"}
CPU = ["--no-progress", "--device", "cpu"]


def task_of(demo_dir: Path, tmp: Path, **data_source: Any) -> Any:
    """The demo's untrained model (seeded: every call has the same weights)."""
    from landseg.config.load import validate_config
    from landseg.tasks.segmentation import SegmentationTask

    raw = json.loads((demo_dir / "demo.json").read_text())
    raw["output_setup"].update(output_folder=str(tmp / "runs"), get_prediction=False)
    raw["data_source"].update(data_source)
    config = validate_config(raw, demo_dir / "demo.json").model_dump(mode="json")
    torch.manual_seed(0)
    return SegmentationTask(config, 4, LABELS).eval()


def boxes(path: Path, cells: list[tuple[int, int, int, int]], values: list) -> str:
    """Polygons of pixel boxes (col0, row0, col1, row1) with a ``cls`` field."""
    shapes = []
    for col0, row0, col1, row1 in cells:
        x0, y0 = TRANSFORM @ (col0, row0)
        x1, y1 = TRANSFORM @ (col1, row1)
        shapes.append(shapely.to_wkb(shapely.geometry.box(x0, y1, x1, y0)))
    pyogrio.raw.write(
        path,
        np.array(shapes, dtype=object),
        [np.asarray(values)],
        ["cls"],
        crs=UTM.to_wkt(),
        geometry_type="Polygon",
    )
    return path.name


@pytest.fixture(scope="module")
def scenes(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 4-band scenes (nodata corner), vector labels, an AOI on one; both runs' checkpoints."""
    tmp = tmp_path_factory.mktemp("scene_eval")
    rows = []
    for index, (height, width) in enumerate(((40, 44), (30, 38))):
        pixels = scene_pixels(height, width, seed=index)
        pixels[:, :5, :7] = 255  # nodata: no prediction, not labelled
        write_geotiff(tmp / f"s{index}.tif", pixels, crs=UTM, transform=TRANSFORM, nodata=255)
        rows.append(f"s{index}.tif")
    labels = boxes(
        tmp / "labels.gpkg",
        [(2, 2, 30, 20), (10, 12, 38, 40), (20, 0, 44, 9)],
        ["water", "building", "bare soil"],
    )
    aoi = boxes(tmp / "aoi.geojson", [(0, 3, 33, 40)], ["x"])
    (tmp / "scenes.csv").write_text(
        f"image,labels,aoi\n{rows[0]},{labels},{aoi}\n{rows[1]},{labels},\n"
    )
    scene_task = task_of(
        demo_dir,
        tmp,
        windows=WINDOWS,
        train_file="scenes.csv",
        val_file="scenes.csv",
        test_file=None,
        mask_bands=None,
        **LABEL_KEYS,
    )
    tile_task = task_of(demo_dir, tmp)
    tile_weights = tile_task.state_dict()
    assert all(torch.equal(w, tile_weights[k]) for k, w in scene_task.state_dict().items())
    config = json.loads((demo_dir / "demo.json").read_text())
    config["data_source"] = scene_task.config.data_source.model_dump(mode="json")
    config["data_source"].update(
        train_file=str(tmp / "scenes.csv"), val_file=str(tmp / "scenes.csv")
    )
    config["output_setup"].update(output_folder=str(tmp / "runs"), get_prediction=False)
    (tmp / "scenes.json").write_text(json.dumps(config))
    return {
        "tmp": tmp,
        "scene_run": save_checkpoint(scene_task, tmp / "scene_run" / "checkpoints" / "m.ckpt"),
        "tile_run": save_checkpoint(tile_task, tmp / "tile_run" / "checkpoints" / "m.ckpt"),
    }


def test_scene_rows_score_as_the_tiles_cut_on_their_grid(scenes: dict, capsys) -> None:
    tmp = scenes["tmp"]
    assert main(["tiles", "-c", str(tmp / "scenes.json"), "--output", str(tmp / "tiles")]) == 0
    scene_args = ["evaluate", "--run", str(scenes["scene_run"]), "--csv", str(tmp / "scenes.csv")]
    assert main([*scene_args, *CPU]) == 0
    entry = json.loads(
        (tmp / "scene_run" / "evaluation" / "scenes" / "evaluation.json").read_text()
    )
    tile_csv = tmp / "tiles" / "val.csv"
    tiles = ["evaluate", "--run", str(scenes["tile_run"]), "--csv", str(tile_csv), "--tile", "16"]
    assert main([*tiles, *CPU]) == 0
    reference = json.loads(
        (tmp / "tile_run" / "evaluation" / "val" / "evaluation.json").read_text()
    )
    # 40x44: rows 0, 12, 24 by cols 0, 12, 24, 28; 30x38: rows 0, 12, 14 by cols 0, 12, 22
    assert entry["windows"] == len(tile_csv.read_text().splitlines()) == 12 + 9
    assert entry["cm_macro"] == reference["cm_macro"]
    assert entry["pixels"] == reference["pixels"] > 0
    assert len(set(map(tuple, np.nonzero(np.array(entry["cm_macro"]))))) > 1
    for key, value in reference.items():
        if "/" in key:
            assert entry[key] == value, key
    assert "Overall" in capsys.readouterr().out


def test_scene_rows_count_each_labelled_pixel_once_with_a_tile_grid(scenes: dict) -> None:
    """--tile/--overlap set the grid; overlapping windows do not count a pixel twice."""
    tmp = scenes["tmp"]
    counts = []
    for grid in (["--tile", "16", "--overlap", "8"], ["--tile", "16"]):
        output = tmp / f"e{len(counts)}.json"
        args = ["evaluate", "--run", str(scenes["scene_run"]), "--csv", str(tmp / "scenes.csv")]
        assert main([*args, *grid, *CPU, "--output", str(output)]) == 0
        entry = json.loads(output.read_text())
        counts.append((entry["pixels"], entry["windows"], entry["stride"]))
    # the same labelled pixels whatever the grid; 16 px every 8: 4x5 + 3x4 windows
    assert counts[0][0] == counts[1][0] > 0
    assert counts[0][1:] == (4 * 5 + 3 * 4, 8)


def test_a_scene_smaller_than_a_window_is_named(scenes: dict, capsys) -> None:
    tmp = scenes["tmp"]
    args = ["evaluate", "--run", str(scenes["scene_run"]), "--csv", str(tmp / "scenes.csv")]
    code, output = run_cli([*args, *CPU, "--tile", "32", "--output", str(tmp / "x.json")], capsys)
    assert code == 2
    assert "scenes.csv, row 3" in output and "smaller than a window of 32 px" in output
    assert not (tmp / "x.json").exists()


def test_predict_takes_scene_rows_and_maps_whole_images(scenes: dict, capsys) -> None:
    """The CSV of scene rows (header, labels, AOI) gives each image's whole map; labels and
    AOI are not read: the map is the image's own prediction."""
    tmp = scenes["tmp"]
    run = ["predict", "--run", str(scenes["scene_run"]), "--tile", "16", "--overlap", "4", *CPU]
    assert main([*run, "--input", str(tmp / "scenes.csv"), "--output", str(tmp / "maps")]) == 0
    assert main([*run, "--input", str(tmp / "s0.tif"), "--output", str(tmp / "one")]) == 0
    assert sorted(p.name for p in (tmp / "maps").glob("*.tif")) == ["s0.tif", "s1.tif"]
    maps = read(tmp / "maps" / "s0.tif")
    assert maps.shape == (1, 40, 44) and (maps[0, 3:, 33:] != 255).all()  # beyond the AOI too
    np.testing.assert_array_equal(maps, read(tmp / "one" / "s0.tif"))
    assert read(tmp / "maps" / "s1.tif").shape == (1, 30, 38)
