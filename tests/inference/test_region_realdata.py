"""A region job on the Massachusetts scenes (skipped without ../shared/data): the two scenes
and a VRT of both, predicted as one job by a tiny untrained model.

The scenes lie 20 km apart and on different grids (0.99904 m and 1 m pixels), so they share
no border: the VRT is laid on the 1 m scene's grid (the other resampled into it by GDAL), the
mosaics hold the scenes of that grid, and the log names the scene kept apart and why.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch

from landseg.cli.main import main
from tests.helpers import OTHER_SCENE, TRAIN_SCENE, save_checkpoint

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

LABELS = ["background", "building"]


def tiny_run(demo_dir: Path, folder: Path) -> Path:
    """An untrained lightunet for 3 bands and 2 classes, saved as a finished run."""
    from landseg.config.load import validate_config
    from landseg.tasks.segmentation import SegmentationTask

    raw = json.loads((demo_dir / "demo.json").read_text())
    raw["output_setup"]["output_folder"] = str(folder / "runs")
    raw["data_source"].update(class_labels=LABELS, image_bands=[1, 2, 3], mask_bands=[1, 2])
    config = validate_config(raw, demo_dir / "demo.json").model_dump(mode="json")
    torch.manual_seed(0)
    task = SegmentationTask(config, 3, LABELS).eval()
    save_checkpoint(task, folder / "run" / "checkpoints" / "m-last.ckpt")
    (folder / "run" / "run.json").write_text(json.dumps({"status": "finished"}))
    return folder / "run"


def both_vrt(data: Path, destination: Path) -> tuple[int, int]:
    """A VRT of both scenes on the grid of the 1 m scene; returns that scene's (x, y) in it."""
    scenes = {}
    for name in (TRAIN_SCENE, OTHER_SCENE):
        with rasterio.open(data / f"{name}.tif") as src:
            scenes[name] = (src.transform, src.width, src.height, src.crs)
    grid = scenes[OTHER_SCENE][0]
    assert (grid.a, grid.e) == (1.0, -1.0)
    left = float(grid.c - np.ceil(grid.c - scenes[TRAIN_SCENE][0].c))  # whole pixels west
    top = max(t.f for t, *_ in scenes.values())

    def place(t: rasterio.Affine, w: int, h: int) -> tuple[int, int, int, int]:
        return round(t.c - left), round(top - t.f), round(w * t.a), round(h * -t.e)

    width = max(x + w for x, _, w, _ in (place(*s[:3]) for s in scenes.values()))
    height = max(y + h for _, y, _, h in (place(*s[:3]) for s in scenes.values()))
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = scenes[OTHER_SCENE][3].to_wkt()
    ET.SubElement(root, "GeoTransform").text = f"{left!r}, 1.0, 0.0, {top!r}, 0.0, -1.0"
    for band in (1, 2, 3):
        element = ET.SubElement(root, "VRTRasterBand", dataType="UInt16", band=str(band))
        ET.SubElement(element, "NoDataValue").text = "255"
        for name, (transform, w, h, _) in scenes.items():
            x, y, dw, dh = place(transform, w, h)
            source = ET.SubElement(element, "ComplexSource")
            ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(
                (data / f"{name}.tif").resolve()
            )
            ET.SubElement(source, "SourceBand").text = str(band)
            ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
            ET.SubElement(source, "DstRect", xOff=str(x), yOff=str(y), xSize=str(dw),
                          ySize=str(dh))  # fmt: skip
            ET.SubElement(source, "NODATA").text = "255"
    destination.write_text(ET.tostring(root, encoding="unicode"))
    return place(*scenes[OTHER_SCENE][:3])[:2]


def test_two_scenes_and_a_vrt_of_both_are_one_job_with_one_mosaic(
    shared_data: Path, demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = shared_data / "massachusetts-buildings"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in (TRAIN_SCENE, OTHER_SCENE):
        (inputs / f"{name}.tif").symlink_to((data / f"{name}.tif").resolve())
    x, y = both_vrt(data, inputs / "both.vrt")
    out = tmp_path / "out"
    run = tiny_run(demo_dir, tmp_path)
    command = ["predict", "--run", str(run), "--input", str(inputs), "--glob", "*",
               "--output", str(out), "--vectorize", "--tile", "256",
               "--overlap", "32", "--batch-size", "8", "--pixel-range", "255",
               "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(command) == 0
    printed = capsys.readouterr().out
    # the scenes share no border, and one of them no grid: said in one line
    assert (
        f"mosaic: 1 scene(s) on another grid than {OTHER_SCENE}, kept apart (their own files keep "
        f"their polygons): {TRAIN_SCENE} (another pixel size)"
    ) in printed, printed
    assert "mosaic of 2 raster(s): " in printed
    with rasterio.open(out / "mosaic.vrt") as mosaic, rasterio.open(out / "both.tif") as both:
        assert mosaic.crs == "EPSG:26986" and (mosaic.width, mosaic.height) == (
            both.width, both.height)  # fmt: skip
        whole = mosaic.read(1, window=((y, y + 751), (x, x + 1046)))
        with rasterio.open(out / f"{OTHER_SCENE}.tif") as scene:
            assert np.array_equal(whole, scene.read(1))  # the scene is drawn over the VRT's
    # polygons of the grid's two predictions (the VRT's covers the 1 m scene's): overlapping
    # regions of a class are one polygon in mosaic.gpkg, and it covers both files' polygons
    _, _, wkb, (ids, _) = pyogrio.raw.read(out / "mosaic.gpkg")
    merged = shapely.from_wkb(wkb)
    assert len(merged) and "(1 piece(s) joined)" in printed
    for k in set(ids.tolist()):
        mine = merged[ids == k]
        overlaps = shapely.area(shapely.intersection(mine[:, None], mine[None]))
        assert (overlaps == np.diag(shapely.area(mine))).all()  # none overlaps another
    for name in (OTHER_SCENE, "both"):
        _, _, wkb, _ = pyogrio.raw.read(out / f"{name}.gpkg")
        inside = shapely.difference(shapely.from_wkb(wkb), shapely.union_all(merged))
        assert shapely.area(inside).max() < 1e-6
