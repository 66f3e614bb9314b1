"""Massachusetts buildings: train on tiles of one scene, predict the other whole scene (uint16)
in one call, check its grid, seams and score (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from landseg.cli.main import main
from tests.helpers import OTHER_SCENE, TRAIN_SCENE, cut_tiles, write_config

pytestmark = pytest.mark.realdata

PREDICT = ["--tile", "128", "--overlap", "32", "--pixel-range", "255", "--no-progress"]


def test_train_on_one_scene_predict_the_other(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "massachusetts-buildings"
    rows = cut_tiles(
        data / f"{TRAIN_SCENE}.tif", data / f"{TRAIN_SCENE}_buildings.tif", tmp_path, 32
    )
    (tmp_path / "train.csv").write_text("\n".join(rows[:24]) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(rows[24:]) + "\n")
    config = {
        "data_source": {
            "train_file": str(tmp_path / "train.csv"),
            "val_file": str(tmp_path / "val.csv"),
            "class_labels": ["background", "building"],
        },
        "train_setup": {
            "model_name": "lightunet",
            "epochs": 2,
            "batch_size": 8,
            "lr": 0.01,
            "optimizer_config": {"optimizer": "adam"},
        },
        "output_setup": {
            "output_folder": str(tmp_path / "runs"),
            "name_exp_log": "mass",
            "version_name": "v1",
            "use_tensorboard": False,
            "get_prediction": False,
            "progress": 0,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": 0},
    }
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", config))]) == 0
    run = tmp_path / "runs" / "mass" / "v1"

    scene = data / f"{OTHER_SCENE}.tif"
    out = tmp_path / "pred"
    args = ["predict", "--run", str(run), "--input", str(scene), "--output", str(out)]
    assert main([*args, "--type", "float32", *PREDICT]) == 0
    assert main([*args[:-1], str(tmp_path / "classes"), *PREDICT]) == 0
    with rasterio.open(scene) as src, rasterio.open(out / scene.name) as probs:
        assert src.dtypes[0] == "uint16"
        assert (probs.width, probs.height) == (src.width, src.height)
        assert probs.crs == src.crs and probs.transform == src.transform
        assert probs.count == 2 and np.isnan(probs.nodata)
        whole = probs.read()
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "classes" / scene.name) as cls:
        assert (cls.crs, cls.transform, cls.shape) == (src.crs, src.transform, src.shape)
        assert cls.nodata == src.nodata == 255
        assert np.isin(cls.read(1), [0, 1, 255]).all()

    # no seams: a crop shifted by a non-multiple of the stride predicts the same interior
    crop = tmp_path / "crop" / "crop.tif"
    crop.parent.mkdir()
    x0, y0, w, h = 37, 61, 520, 430
    with rasterio.open(scene) as src:
        window = Window(x0, y0, w, h)
        profile = {
            **src.profile,
            "width": w,
            "height": h,
            "transform": src.window_transform(window),
        }
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))
    args = ["predict", "--run", str(run), "--input", str(crop), "--output", str(tmp_path / "c")]
    assert main([*args, "--type", "float32", *PREDICT]) == 0
    with rasterio.open(tmp_path / "c" / "crop.tif") as part:
        shifted = part.read()
    m = 128
    inner = whole[:, y0 + m : y0 + h - m, x0 + m : x0 + w - m]
    assert np.abs(inner - shifted[:, m : h - m, m : w - m]).max() < 1e-4

    masks = tmp_path / "masks.csv"
    masks.write_text(f"{scene},{data / f'{OTHER_SCENE}_buildings.tif'}\n")
    assert (
        main(["evaluate", "--predictions", str(tmp_path / "classes"), "--masks", str(masks)]) == 0
    )
    entry = json.loads((tmp_path / "classes" / "evaluation.json").read_text())
    assert isinstance(entry["building/IoU"], float) and 0 <= entry["building/IoU"] <= 1
    assert entry["pixels"] == 1046 * 751 and entry["cm_macro"][1][0] + entry["cm_macro"][1][1] > 0
