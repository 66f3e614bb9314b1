"""SegmentationDataset: sample contents, per-sample determinism, errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from landseg.config.schema import SplitStats
from landseg.core.errors import ConfigError, DataError
from landseg.core.files import write_geotiff
from landseg.data.csvfiles import read_pairs
from landseg.data.dataset import SegmentationDataset
from landseg.data.raster import read_image
from landseg.data.sampler import SeededSampler

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _dataset(csv_path: Path, **kwargs) -> SegmentationDataset:
    options = {
        "image_bands": None,
        "mask_bands": None,
        "n_classes": 3,
        "pixel_range": 255.0,
    } | kwargs
    return SegmentationDataset(read_pairs(csv_path), **options)


def test_sample_contents(tmp_path: Path, make_dataset) -> None:
    csv_path = make_dataset(tmp_path, n=2, nodata=0)  # one-hot, first row all zero
    sample = _dataset(csv_path, image_bands=[3, 1])[1]
    assert sample["index"] == 1
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (2, 32, 32)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (32, 32)
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    assert (sample["mask"][0] == -1).all() and (sample["mask"][1:] >= 0).all()


def test_stats_are_applied(tmp_path: Path, make_dataset) -> None:
    csv_path = make_dataset(tmp_path, n=1)
    plain = _dataset(csv_path)[0]["image"]
    stats = SplitStats(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    normed = _dataset(csv_path, stats=stats)[0]["image"]
    torch.testing.assert_close(normed, (plain - 0.5) / 0.25)


def test_uint16_with_pixel_range(tmp_path: Path, make_dataset) -> None:
    csv_path = make_dataset(tmp_path, n=1, dtype="uint16", mask="index")
    image = _dataset(csv_path, pixel_range=4095.0)[0]["image"]
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.9


def test_seeded_augmentation(tmp_path: Path, make_dataset) -> None:
    dataset = _dataset(make_dataset(tmp_path, n=2), augmentations=["rotation", "radiometry"])
    a, b = dataset[(0, 11)], dataset[(0, 11)]
    torch.testing.assert_close(a, b)
    assert not torch.equal(a["image"], dataset[(0, 12)]["image"])
    torch.testing.assert_close(dataset[1], dataset[1])  # an int key derives its own seed


def _epoch(dataset: SegmentationDataset, workers: int, epoch: int) -> list[dict]:
    sampler = SeededSampler(len(dataset), seed=9, shuffle=True)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)
    return list(loader)


def test_same_samples_with_any_number_of_workers(tmp_path: Path, make_dataset) -> None:
    dataset = _dataset(
        make_dataset(tmp_path, n=6, size=16), augmentations=["rotation", "radiometry"]
    )
    serial = _epoch(dataset, 0, epoch=3)
    parallel = _epoch(dataset, 2, epoch=3)
    assert len(serial) == 3
    for x, y in zip(serial, parallel, strict=True):
        torch.testing.assert_close(x, y)
    other_epoch = _epoch(dataset, 0, epoch=4)
    assert any(
        not torch.equal(x["image"], y["image"]) for x, y in zip(serial, other_epoch, strict=True)
    )


def test_nan_pixels_name_the_file(tmp_path: Path, make_dataset) -> None:
    csv_path = make_dataset(tmp_path, n=1, dtype="float32")
    image_path = tmp_path / "train" / "img" / "0.tif"
    data = np.zeros((3, 32, 32), np.float32)
    data[1, 3, 4] = np.nan
    write_geotiff(image_path, data)
    with pytest.raises(DataError, match=rf"{image_path}: image has NaN"):
        _dataset(csv_path, pixel_range=1.0)[0]


def test_unreadable_raster_mid_run_names_the_file(tmp_path: Path, make_dataset) -> None:
    dataset = _dataset(make_dataset(tmp_path, n=2))
    mask_path = tmp_path / "train" / "msk" / "1.tif"
    mask_path.write_bytes(b"truncated")
    dataset[0]
    with pytest.raises(DataError, match=str(mask_path)):
        dataset[1]


def test_size_mismatch_names_the_row(tmp_path: Path, make_dataset) -> None:
    csv_path = make_dataset(tmp_path, n=1)
    write_geotiff(tmp_path / "train" / "msk" / "0.tif", np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(DataError, match=r"row 1: image .* is 32x32 but mask .* is 16x16"):
        _dataset(csv_path)[0]


def test_unknown_augmentation_is_a_config_error(tmp_path: Path, make_dataset) -> None:
    with pytest.raises(ConfigError, match=r"data_source\.data_augmentation: unknown augmentation"):
        _dataset(make_dataset(tmp_path, n=1), augmentations=["flip"])


@pytest.mark.parametrize(
    ("dtype", "nodata"), [("uint8", 255), ("float32", float("nan")), ("uint16", 0)]
)
def test_image_nodata_pixels_are_ignored_and_blacked_out(
    tmp_path: Path, make_dataset, dtype: str, nodata: float
) -> None:
    csv_path = make_dataset(tmp_path, n=1, dtype=dtype, mask="index")
    [pair] = read_pairs(csv_path)
    image = read_image(pair.image)
    image[:, 2, :] = nodata  # row 2: nodata in every band
    if not np.isnan(nodata):  # (a NaN in one band only is an error, tested elsewhere)
        image[0, 3, :] = nodata  # row 3: in one band only, still data
    write_geotiff(pair.image, image, nodata=nodata)
    pixel_range = {"uint8": 255.0, "float32": 1.0, "uint16": 4095.0}[dtype]
    sample = _dataset(csv_path, pixel_range=pixel_range)[0]
    assert (sample["mask"][2] == -1).all()
    assert (sample["mask"][3] >= 0).all() and (sample["mask"][4:] >= 0).all()
    assert (sample["image"][:, 2] == 0).all()
    assert torch.isfinite(sample["image"]).all()
