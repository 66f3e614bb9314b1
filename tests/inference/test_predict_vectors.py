"""`landseg predict`'s map options: --vectorize (a GeoPackage beside each class map, checked
before any work), --tta, --workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.crs import CRS as RasterioCRS

from landseg.cli.main import main
from tests.helpers import LABELS, demo_task, save_checkpoint, scene_pixels, write_scene

COMMON = ["--tile", "32", "--overlap", "8", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(demo_task(demo_dir, folder), folder / "checkpoints" / "m-last.ckpt")
    (folder / "run.json").write_text(json.dumps({"status": "finished"}))
    return folder


def test_vectorize_writes_the_class_maps_regions(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scene = write_scene(tmp_path / "in" / "scene.tif", scene_pixels(60, 70))
    out = tmp_path / "out"
    args = ["predict", "--run", str(run), "--input", str(scene), "--output", str(out)]
    assert main([*args, *COMMON, "--vectorize"]) == 0
    with rasterio.open(out / "scene.tif") as src:
        classes, crs, pixel_area = src.read(1), src.crs, abs(src.transform.a * src.transform.e)
    meta, _, geometry, fields = pyogrio.raw.read(out / "scene.gpkg")
    assert RasterioCRS.from_user_input(meta["crs"]) == crs
    assert meta["fields"].tolist() == ["class_id", "class_name"]
    ids, names = fields
    present = np.unique(classes[classes != 255])
    assert sorted(set(ids.tolist())) == present.tolist()
    assert all(name == LABELS[int(i)] for i, name in zip(ids, names, strict=True))
    from shapely import from_wkb

    areas = {int(c): 0.0 for c in present}
    for class_id, wkb in zip(ids, geometry, strict=True):
        areas[int(class_id)] += from_wkb(wkb).area
    for class_id in present:
        expected = int((classes == class_id).sum()) * pixel_area
        assert areas[int(class_id)] == pytest.approx(expected, rel=1e-3)
    assert "polygons" in capsys.readouterr().out


def test_vector_options_are_checked_before_anything_is_predicted(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scene = write_scene(tmp_path / "in" / "scene.tif", scene_pixels(40, 40))
    out = tmp_path / "out"
    base = ["predict", "--run", str(run), "--input", str(scene), "--output", str(out), *COMMON]
    cases = [
        (["--min-area", "4"], "--min-area: only with --vectorize"),
        (["--vectorize", "--type", "uint8"], "--vectorize: polygons are made from class maps"),
        (["--vectorize", "--classes", "lava"], "--classes: unknown class 'lava'"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    degrees = write_scene(
        tmp_path / "in" / "wgs84.tif",
        scene_pixels(40, 40),
        transform=rasterio.transform.from_origin(2.0, 48.0, 1e-5, 1e-5),
    )
    with rasterio.open(degrees, "r+") as dst:
        dst.crs = RasterioCRS.from_epsg(4326)
    geographic = ["predict", "--run", str(run), "--input", str(degrees), "--output", str(out)]
    capsys.readouterr()
    assert main([*geographic, *COMMON, "--vectorize", "--min-area", "4"]) == 2
    assert "has a geographic CRS (degrees)" in capsys.readouterr().err
    assert not out.exists()


def test_tta_flag_predicts_the_mean_over_the_transforms(run: Path, tmp_path: Path) -> None:
    """--tta d4 writes what the TTA wrapper computes around the run's model."""
    from landseg.inference.scene import LoadedModel, PredictOptions, Tiling, predict_scene
    from landseg.inference.tta import TTAModel

    scene = write_scene(tmp_path / "in" / "scene.tif", scene_pixels(48, 40))
    args = ["predict", "--run", str(run), "--input", str(scene), *COMMON, "--type", "float32"]
    assert main([*args, "--output", str(tmp_path / "plain")]) == 0
    assert main([*args, "--output", str(tmp_path / "tta"), "--tta", "d4"]) == 0
    model = TTAModel(LoadedModel.load(run / "checkpoints" / "m-last.ckpt", "cpu"), "d4")
    expected = tmp_path / "expected" / "scene.tif"
    options = PredictOptions(Tiling(tile=32, overlap=8), "float32", None)
    predict_scene(model, scene, expected, options)
    with rasterio.open(tmp_path / "tta" / "scene.tif") as got, rasterio.open(expected) as want:
        assert np.allclose(got.read(), want.read(), atol=1e-6)
    with rasterio.open(tmp_path / "plain" / "scene.tif") as plain, rasterio.open(expected) as tta:
        assert not np.allclose(plain.read(), tta.read(), atol=1e-4)  # an untrained model varies


def test_workers_predict_the_same_maps_as_one_process(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    for i, (height, width) in enumerate([(40, 50), (64, 36), (30, 30)]):
        write_scene(folder / f"s{i}.tif", scene_pixels(height, width, seed=i))
    args = ["predict", "--run", str(run), "--input", str(folder), *COMMON]
    assert main([*args, "--output", str(tmp_path / "one")]) == 0
    assert main([*args, "--output", str(tmp_path / "two"), "--workers", "2"]) == 0
    for i in range(3):
        one, two = tmp_path / "one" / f"s{i}.tif", tmp_path / "two" / f"s{i}.tif"
        with rasterio.open(one) as a, rasterio.open(two) as b:
            assert np.array_equal(a.read(), b.read())
            assert a.tags() == b.tags() and a.profile == b.profile
    # no temporary file left; the job's state (landseg.inference.job) is all that is hidden
    assert [p.name for p in (tmp_path / "two").glob(".*")] == [".predict"]
    assert not list((tmp_path / "two").rglob(".*.tmp"))


def test_cpu_workers_share_the_cores() -> None:
    from landseg.launch.devices import cpu_share as cpu_threads
    from landseg.launch.devices import visible_gpus

    assert cpu_threads(1) >= 1 and cpu_threads(10_000) == 1
    assert visible_gpus("cpu") == []
