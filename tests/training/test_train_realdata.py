"""`landseg train` on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from landseg.cli.main import main
from landseg.core.files import write_geotiff
from tests.helpers import write_config

DUBAI_CLASSES = ["building", "land", "road", "vegetation", "water", "unlabeled"]


def subset_csv(source: Path, destination: Path, every: int, count: int) -> Path:
    """Every n-th row of an ODEON CSV, with absolute paths."""
    rows = [r for r in source.read_text().splitlines() if r.strip()][::every][:count]
    folder = source.parent
    destination.write_text(
        "\n".join(",".join(str(folder / cell) for cell in row.split(",")) for row in rows) + "\n"
    )
    return destination


@pytest.mark.realdata
@pytest.mark.slow
def test_dubai_lightunet_learns_and_writes_every_output(shared_data: Path, tmp_path: Path):
    dubai = shared_data / "dubai-aerial"
    config = {
        "data_source": {
            "train_file": str(subset_csv(dubai / "train.csv", tmp_path / "train.csv", 18, 48)),
            "val_file": str(subset_csv(dubai / "val.csv", tmp_path / "val.csv", 5, 16)),
            "test_file": str(subset_csv(dubai / "test.csv", tmp_path / "test.csv", 45, 8)),
            "image_bands": [1, 2, 3],
            "mask_bands": [1, 2, 3, 4, 5, 6],
            "class_labels": DUBAI_CLASSES,
            "data_augmentation": {"train": ["rotation90"]},
        },
        "train_setup": {
            # ODEON's light U-Net has no batch norm; without it, 36 steps on real tiles are too
            # few to leave the all-"land" start (measured: mIoU stays 0.044 for 4 epochs)
            "model_name": "lightunet",
            "model_params": {"batch_norm": True},
            "epochs": 3,
            "batch_size": 4,
            "lr": 0.005,
            "class_imbalance": [1, 1, 1, 1, 1, 0],
            "random_seed": 1,
        },
        "output_setup": {
            "output_folder": str(tmp_path / "runs"),
            "name_exp_log": "dubai",
            "version_name": "v0",
            "get_prediction": True,
            "log_learning_rate": True,
            "save_top_k": 1,
            "progress": 0,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": 2},
    }
    assert main(["train", "-c", str(write_config(tmp_path / "dubai.json", config))]) == 0
    run = tmp_path / "runs" / "dubai" / "v0"
    history = json.loads((run / "history.json").read_text())
    assert list(history) == ["0", "1", "2"]
    # predicting "land" everywhere gives a mean IoU of 0.044 on these tiles
    ious = [entry["Average/IoU"] for entry in history.values()]
    assert max(ious) > 0.12 and ious[-1] > ious[0], ious
    assert (run / "history_test.json").exists()
    assert len(list((run / "predictions").glob("*.tif"))) == 8
    assert {p.parent.name for p in (run / "tensorboard").rglob("events.*")} >= {"train", "val"}
    assert list((run / "figures").glob("*.png"))


def cut_tiles(scene: Path, mask: Path, folder: Path, size: int, count: int) -> list[str]:
    """Cut `count` tiles of `size` pixels from a scene and its mask (CRS kept)."""
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as src, rasterio.open(mask) as msk:
        for i in range(count):
            window = Window((i % 8) * size * 2, (i // 8) * size * 2, size, size)
            image_path, mask_path = folder / f"img_{i}.tif", folder / f"msk_{i}.tif"
            transform = src.window_transform(window)
            write_geotiff(image_path, src.read(window=window), crs=src.crs, transform=transform)
            write_geotiff(mask_path, msk.read(window=window), crs=src.crs, transform=transform)
            rows.append(f"{image_path},{mask_path}")
    return rows


@pytest.mark.realdata
@pytest.mark.slow
def test_massachusetts_scene_predictions_keep_crs_and_transform(
    shared_data: Path, tmp_path: Path
) -> None:
    data = shared_data / "massachusetts-buildings"
    scene, mask = data / "22978945_15.tif", data / "22978945_15_buildings.tif"
    rows = cut_tiles(scene, mask, tmp_path / "tiles", 64, 20)
    (tmp_path / "train.csv").write_text("\n".join(rows[:16]) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(rows[16:]) + "\n")
    (tmp_path / "test.csv").write_text(f"{scene},{mask}\n")  # the whole scene
    config = {
        "data_source": {
            "train_file": str(tmp_path / "train.csv"),
            "val_file": str(tmp_path / "val.csv"),
            "test_file": str(tmp_path / "test.csv"),
            "class_labels": ["background", "building"],
        },
        "train_setup": {"model_name": "lightunet", "epochs": 1, "batch_size": 4},
        "output_setup": {
            "output_folder": str(tmp_path / "runs"),
            "name_exp_log": "mass",
            "version_name": "v0",
            "get_prediction": True,
            "prediction_output_type": "float32",
            "use_tensorboard": False,
            "progress": 0,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": 0},
    }
    assert main(["train", "-c", str(write_config(tmp_path / "mass.json", config))]) == 0
    prediction = tmp_path / "runs" / "mass" / "v0" / "predictions" / scene.name
    with rasterio.open(scene) as src, rasterio.open(prediction) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        probabilities = out.read()
    assert probabilities.shape[0] == 2
    valid = np.isfinite(probabilities).all(axis=0)
    assert np.allclose(probabilities.sum(axis=0)[valid], 1, atol=1e-4)
