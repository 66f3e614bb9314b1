"""From a trained run to a map, on the Massachusetts scenes (skipped without ../shared/data):
a model trained on tiles of one scene predicts the other (uint16, --pixel-range 255) as a COG
with overviews, colour table and QGIS style; its buildings become the same polygons whatever
the block size, with the raster's area; TTA over the rotations it was trained with keeps the
IoU; the ONNX export predicts the same map."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from landseg.cli.main import main
from landseg.maps.vectorize import vectorize
from tests.helpers import OTHER_SCENE, SHARED_DATA, TRAIN_SCENE, cut_tiles, write_config

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

PREDICT = ["--tile", "128", "--overlap", "32", "--pixel-range", "255", "--no-progress"]


def polygons(path: Path) -> list[tuple[int, bytes]]:
    _, _, geometry, (ids, _) = pyogrio.raw.read(path)
    shapes = shapely.normalize(shapely.from_wkb(geometry))
    return sorted((int(i), shapely.to_wkb(g)) for i, g in zip(ids, shapes, strict=True))


def building_iou(predictions: Path, masks: Path) -> float:
    assert main(["evaluate", "--predictions", str(predictions), "--masks", str(masks)]) == 0
    return float(json.loads((predictions / "evaluation.json").read_text())["building/IoU"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained on tiles of one scene (the run folder, and the folder it lives in)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp_path = tmp_path_factory.mktemp("maps")
    data = SHARED_DATA / "massachusetts-buildings"
    rows = cut_tiles(
        data / f"{TRAIN_SCENE}.tif", data / f"{TRAIN_SCENE}_buildings.tif", tmp_path, 48, 128
    )
    (tmp_path / "train.csv").write_text("\n".join(rows[:40]) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(rows[40:]) + "\n")
    config = {
        "data_source": {
            "train_file": str(tmp_path / "train.csv"),
            "val_file": str(tmp_path / "val.csv"),
            "class_labels": ["background", "building"],
            # TTA averages over the transforms the model was trained to be invariant to
            "data_augmentation": {"train": ["rotation90"]},
        },
        # 200 steps: a model that finds buildings on the other scene (IoU about 0.5 here)
        # and has learnt the rotations TTA averages over; with 50 or 100 steps the TTA effect
        # is noise (-3 and -1 points measured here, +1.7 with 200)
        "train_setup": {
            "model_name": "lightunet",
            "model_params": {"batch_norm": True},
            "epochs": 40,
            "batch_size": 8,
            "lr": 0.01,
            "class_imbalance": [1.0, 3.0],
        },
        "output_setup": {
            "output_folder": str(tmp_path / "runs"),
            "name_exp_log": "mass",
            "version_name": "v1",
            "use_tensorboard": False,
            "progress": 0,
            "class_colors": ["#d9d9d9", "#e31a1c"],
        },
        # pinned, never auto (which picks by host): bf16-mixed, the path most machines take
        # (autocast runs on any CPU; natively, as here, 42 s of training become 26 s)
        "device_setup": {"accelerator": "cpu", "num_workers": 0, "precision": "bf16-mixed"},
    }
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", config))]) == 0
    return tmp_path / "runs" / "mass" / "v1", tmp_path


@pytest.fixture(scope="module")
def plain_map(trained: tuple[Path, Path]) -> tuple[Path, Path, float]:
    """The other scene predicted by the trained run, with polygons (the map folder, the masks
    CSV, the building IoU): predicted once for both tests, which read it."""
    run, tmp_path = trained
    data = SHARED_DATA / "massachusetts-buildings"
    scene = data / f"{OTHER_SCENE}.tif"
    masks = tmp_path / "masks.csv"
    masks.write_text(f"{scene},{data / f'{OTHER_SCENE}_buildings.tif'}\n")
    out = tmp_path / "map"
    predict = ["predict", "--run", str(run), "--input", str(scene), *PREDICT]
    assert main([*predict, "--output", str(out), "--vectorize"]) == 0
    return out, masks, building_iou(out, masks)


def test_from_a_trained_run_to_a_map(
    trained: tuple[Path, Path], plain_map: tuple[Path, Path, float], tmp_path: Path
) -> None:
    run, _ = trained
    out, _, plain_iou = plain_map
    scene = SHARED_DATA / "massachusetts-buildings" / f"{OTHER_SCENE}.tif"

    # a cloud-optimised class map that opens in QGIS with its colours and names
    raster = out / scene.name
    with rasterio.open(scene) as src, rasterio.open(raster) as cls:
        assert cls.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cls.overviews(1)  # internal overviews
        assert (cls.crs, cls.transform, cls.nodata) == (src.crs, src.transform, 255)
        colours = cls.colormap(1)
        assert colours[0][:3] == (0xD9, 0xD9, 0xD9) and colours[1][:3] == (0xE3, 0x1A, 0x1C)
        classes = cls.read(1)
        pixel_area = abs(cls.transform.a * cls.transform.e)
    entries = ET.parse(out / f"{OTHER_SCENE}.qml").getroot().iter("paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        ("0", "background", "#d9d9d9"),
        ("1", "building", "#e31a1c"),
    ]

    # buildings as polygons: the same whatever the block size, with the raster's area
    gpkg = out / f"{OTHER_SCENE}.gpkg"
    small_blocks = tmp_path / "blocks64.gpkg"
    vectorize(raster, small_blocks, ["background", "building"], block_size=64)
    assert polygons(gpkg) == polygons(small_blocks)
    _, _, geometry, (ids, _) = pyogrio.raw.read(gpkg)
    area = shapely.area(shapely.from_wkb(geometry))[np.asarray(ids) == 1].sum()
    assert area == pytest.approx(int((classes == 1).sum()) * pixel_area, rel=1e-3)

    assert plain_iou > 0.3  # a model that maps buildings: the comparisons below mean something

    # the ONNX export predicts the same map
    assert main(["export", str(run), "--format", "onnx", "--tile", "128"]) == 0
    (onnx,) = (run / "exports").glob("*.onnx")
    portable = tmp_path / "onnx"
    args = ["predict", "--model", str(onnx), "--input", str(scene), "--output", str(portable)]
    assert main([*args, "--pixel-range", "255", "--no-progress"]) == 0
    with rasterio.open(portable / scene.name) as other:
        same = float((other.read(1) == classes).mean())
    assert same >= 0.999


def test_tta_keeps_the_iou(
    trained: tuple[Path, Path], plain_map: tuple[Path, Path, float], tmp_path: Path
) -> None:
    run, _ = trained
    _, masks, plain = plain_map
    scene = SHARED_DATA / "massachusetts-buildings" / f"{OTHER_SCENE}.tif"
    predict = ["predict", "--run", str(run), "--input", str(scene), *PREDICT]
    assert main([*predict, "--output", str(tmp_path / "tta"), "--tta", "rot90"]) == 0
    assert building_iou(tmp_path / "tta", masks) >= plain - 0.002  # 0.2 points
