"""Training on scene rows read by a grid of windows equals training on the tiles of that grid."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from landseg.cli.main import main
from landseg.core.files import write_geotiff
from tests.helpers import assert_same_end, scene_pixels, sigkill_when, write_config

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(0.5, 0, 500_000.0, 0, -0.5, 5_000_000.0)
TILE = 32


def write_scene(folder: Path, name: str, height: int, width: int, seed: int) -> str:
    pixels = scene_pixels(height, width, seed)
    classes = (pixels[0] // 64).astype(np.uint8)  # 4 classes that follow the image
    classes[:2, :5] = 255  # a few unlabelled pixels (the labels' nodata)
    write_geotiff(folder / f"{name}.tif", pixels, crs=UTM, transform=TRANSFORM)
    write_geotiff(folder / f"{name}_l.tif", classes, crs=UTM, transform=TRANSFORM, nodata=255)
    return f"{name}.tif,{name}_l.tif"


def cut_tiles(folder: Path, name: str, out: Path) -> list[str]:
    """The scene's tiles on the grid from its top-left, row by row (as a user cuts them)."""
    rows = []
    with (
        rasterio.open(folder / f"{name}.tif") as img,
        rasterio.open(folder / f"{name}_l.tif") as lab,
    ):
        for row in range(0, img.height, TILE):
            for col in range(0, img.width, TILE):
                window = Window(col, row, TILE, TILE)
                cells = []
                for src, kind in ((img, "i"), (lab, "m")):
                    path = out / f"{name}_{row}_{col}_{kind}.tif"
                    write_geotiff(
                        path,
                        src.read(window=window),
                        crs=UTM,
                        transform=src.transform @ Affine.translation(col, row),
                        nodata=src.nodata,
                    )
                    cells.append(path.name)
                rows.append(",".join(cells))
    return rows


def config(folder: Path, output: Path, **data_source: object) -> dict:
    return {
        "data_source": {
            "train_file": str(folder / "train.csv"),
            "val_file": str(folder / "val.csv"),
            "class_labels": ["water", "vegetation", "bare soil", "building"],
            "data_augmentation": {"train": ["rotation90"]},
            **data_source,
        },
        "train_setup": {
            "model_name": "lightunet",
            "epochs": 2,
            "batch_size": 2,
            "lr": 0.01,
            "random_seed": 7,
            "deterministic": True,
        },
        "output_setup": {
            "output_folder": str(output),
            "name_exp_log": "exp",
            "version_name": "v1",
            "save_top_k": 1,
            "use_tensorboard": False,
            "get_prediction": False,
            "progress": 0,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": 0, "precision": "32-true"},
    }


@pytest.mark.slow
def test_training_on_the_grid_of_scenes_equals_training_on_its_tiles(tmp_path: Path) -> None:
    scenes, tiles = tmp_path / "scenes", tmp_path / "tiles"
    scenes.mkdir()
    tiles.mkdir()
    (scenes / "train.csv").write_text(write_scene(scenes, "a", 64, 64, seed=1) + "\n")
    (scenes / "val.csv").write_text(write_scene(scenes, "b", 32, 64, seed=2) + "\n")
    (tiles / "train.csv").write_text("\n".join(cut_tiles(scenes, "a", tiles)) + "\n")
    (tiles / "val.csv").write_text("\n".join(cut_tiles(scenes, "b", tiles)) + "\n")

    on_tiles = config(tiles, tmp_path / "tile_runs")
    on_scenes = config(scenes, tmp_path / "scene_runs", windows={"size": TILE})
    assert main(["train", "-c", str(write_config(tmp_path / "t.json", on_tiles))]) == 0
    assert main(["train", "-c", str(write_config(tmp_path / "s.json", on_scenes))]) == 0
    assert_same_end(tmp_path / "scene_runs" / "exp" / "v1", tmp_path / "tile_runs" / "exp" / "v1")


@pytest.mark.slow
def test_random_windows_killed_mid_epoch_continue_like_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """Random training windows: a run with two loader workers, killed after its first
    mid-epoch checkpoint and continued, ends bit for bit like an uninterrupted run without
    workers (the windows depend on the seed, the epoch and the sample index alone)."""
    (tmp_path / "train.csv").write_text(write_scene(tmp_path, "a", 64, 80, seed=3) + "\n")
    (tmp_path / "val.csv").write_text(write_scene(tmp_path, "b", 32, 32, seed=4) + "\n")
    windows = {"size": TILE, "samples_per_epoch": 8, "max_nodata": 0.1}
    reference = config(tmp_path, tmp_path / "runs", windows=windows)
    reference["train_setup"].update(epochs=1, checkpoint_every_n_steps=2)  # 4 steps
    reference["output_setup"]["version_name"] = "reference"
    assert main(["train", "-c", str(write_config(tmp_path / "r.json", reference))]) == 0

    killed = json.loads(json.dumps(reference))
    killed["output_setup"]["version_name"] = "killed"
    killed["device_setup"]["num_workers"] = 2
    run = tmp_path / "runs" / "exp" / "killed"
    path = write_config(tmp_path / "k.json", killed)
    moment = lambda: any((run / "checkpoints").glob("*-step=*.ckpt"))  # noqa: E731
    assert sigkill_when(["train", "-c", str(path)], moment, timeout=120) == -signal.SIGKILL
    killed["train_setup"]["continue_training"] = True
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", killed))]) == 0
    assert json.loads((run / "run.json").read_text())["resumed"]
    assert_same_end(run, tmp_path / "runs" / "exp" / "reference")
