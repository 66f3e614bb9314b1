"""``DIR/areas.csv``: the total rows never add areas in two units (scenes on several CRSs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from landseg.maps.mosaic import write_areas

LABELS = ["background", "building"]
US_FOOT = 1200 / 3937  # metres


def class_raster(path: Path, pixels: np.ndarray, crs: str, size: float) -> Path:
    profile = {
        "driver": "GTiff", "count": 1, "height": pixels.shape[0], "width": pixels.shape[1],
        "dtype": "uint8", "nodata": 255, "crs": crs,
        "transform": Affine(size, 0, 500_000, 0, -size, 900_000),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels[None])
        dst.update_tags(landseg_type="classes", landseg_class_labels=json.dumps(LABELS))
    return path


def areas(folder: Path) -> dict[tuple[str, int], dict[str, str]]:
    rows = csv.DictReader((folder / "areas.csv").open())
    return {(r["scene"], int(r["class_id"])): r for r in rows}


def test_scenes_on_two_crss_are_totalled_per_crs_and_in_hectares_only(tmp_path: Path) -> None:
    one = np.zeros((4, 5), np.uint8)
    one[0, :3] = 1  # 3 buildings, 17 background
    two = np.ones((2, 2), np.uint8)  # 4 buildings
    feet = np.zeros((3, 3), np.uint8)  # 9 background
    rasters = [
        class_raster(tmp_path / "a.tif", one, "EPSG:32631", 0.5),
        class_raster(tmp_path / "b.tif", two, "EPSG:32631", 1.0),
        class_raster(tmp_path / "c.tif", feet, "EPSG:2249", 2.0),  # US survey feet
    ]
    write_areas(tmp_path, rasters)
    rows = areas(tmp_path)
    assert [key for key in rows if key[0].startswith("total")] == [
        ("total EPSG:2249", 0), ("total EPSG:2249", 1),
        ("total EPSG:32631", 0), ("total EPSG:32631", 1),
        ("total", 0), ("total", 1),
    ]  # fmt: skip
    utm = rows[("total EPSG:32631", 1)]
    assert (int(utm["pixels"]), float(utm["area_map_units2"])) == (7, 3 * 0.25 + 4 * 1.0)
    assert float(utm["area_ha"]) == pytest.approx(4.75 / 10_000, abs=1e-6)
    feet_m2 = 9 * 4 * US_FOOT**2
    state = rows[("total EPSG:2249", 0)]
    assert (int(state["pixels"]), float(state["area_map_units2"])) == (9, 36.0)  # square feet
    assert float(state["area_ha"]) == pytest.approx(feet_m2 / 10_000, abs=1e-6)
    background = rows[("total", 0)]
    assert background["area_map_units2"] == ""  # square feet and square metres: not added
    assert int(background["pixels"]) == 17 + 9
    assert float(background["area_ha"]) == pytest.approx((17 * 0.25 + feet_m2) / 10_000, abs=1e-6)

    write_areas(tmp_path, rasters[:2])  # one CRS: the total rows as they were
    rows = areas(tmp_path)
    assert [key for key in rows if key[0].startswith("total")] == [("total", 0), ("total", 1)]
    assert float(rows[("total", 1)]["area_map_units2"]) == 4.75
