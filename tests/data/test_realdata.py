"""The pipeline on the shared real datasets (skipped when ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from landseg.core.errors import DataError
from landseg.data.checks import check_data
from landseg.data.csvfiles import read_pairs
from landseg.data.datamodule import CsvSegmentationDataModule
from landseg.data.raster import read_mask

pytestmark = pytest.mark.realdata

DUBAI_LABELS = ["building", "land", "road", "vegetation", "water", "unlabeled"]


def test_dubai_onehot_checks_and_loads(shared_data: Path, tmp_path: Path, make_config) -> None:
    dubai = shared_data / "dubai-aerial"
    config = make_config(
        dubai / "train.csv",
        tmp_path,
        val_file=dubai / "val.csv",
        mask_bands=[1, 2, 3, 4, 5, 6],
        class_labels=DUBAI_LABELS,
        train_setup={"testing": True},
    )
    summary = check_data(config)
    assert summary.mask_kind == "onehot" and summary.n_classes == 6
    assert summary.patch_size == (256, 256) and summary.n_image_bands == 3
    assert (
        summary.report
        == "checked 945 rows in 2 CSV files: headers of 1890 rasters (no pixels read)"
    )
    module = CsvSegmentationDataModule(config, summary)
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 256, 256)
    assert int(batch["mask"].min()) >= -1 and int(batch["mask"].max()) <= 5


def test_dubai_fifteen_mask_bands_fail(shared_data: Path, tmp_path: Path, make_config) -> None:
    dubai = shared_data / "dubai-aerial"
    config = make_config(
        dubai / "train.csv", tmp_path, val_file=dubai / "val.csv", mask_bands=list(range(1, 16))
    )
    with pytest.raises(DataError) as info:
        check_data(config)
    assert info.value.problems[0].startswith("data_source.mask_bands: band 15 but mask ")
    assert info.value.problems[0].endswith(" has 6 bands")


def _raw(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_dubai_index_masks_ignore_nodata(shared_data: Path, tmp_path: Path, make_config) -> None:
    dubai = shared_data / "dubai-aerial"
    config = make_config(dubai / "train_index.csv", tmp_path, class_labels=DUBAI_LABELS)
    summary = check_data(config)
    assert summary.mask_kind == "index" and summary.n_classes == 6
    index_pairs = read_pairs(dubai / "train_index.csv")
    row = next(i for i, pair in enumerate(index_pairs) if (_raw(pair.mask) == 255).any())
    pair, raw = index_pairs[row], _raw(index_pairs[row].mask)
    classes = read_mask(pair.mask, None, summary.n_classes)
    np.testing.assert_array_equal(classes == -1, raw == 255)
    onehot = read_mask(read_pairs(dubai / "train.csv")[row].mask, list(range(1, 7)), 6)
    np.testing.assert_array_equal(classes, onehot)


def test_massachusetts_uint16_needs_pixel_range(
    shared_data: Path, tmp_path: Path, make_config
) -> None:
    folder = shared_data / "massachusetts-buildings"
    csv_path = tmp_path / "scene.csv"
    csv_path.write_text(f"{folder / '23429155_15.tif'},{folder / '23429155_15_buildings.tif'}\n")
    config = make_config(csv_path, tmp_path, val_file=csv_path)
    with pytest.raises(DataError) as info:
        check_data(config)
    [line] = info.value.problems
    assert line.startswith("data_source.pixel_range is required for uint16 images")
    assert "23429155_15.tif" in line
    summary = check_data(make_config(csv_path, tmp_path, val_file=csv_path, pixel_range=255))
    assert summary.mask_kind == "index" and summary.n_classes == 2
    assert summary.patch_size == (751, 1046) and summary.image_dtype == "uint16"
