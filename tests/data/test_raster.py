"""Reading images and masks: band selection, one-hot and index masks, unlabelled pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landseg.core.errors import DataError
from landseg.core.files import write_geotiff
from landseg.data.raster import index_mask_max, mask_kind, read_header, read_image, read_mask
from landseg.data.summary import IGNORE_INDEX

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def test_read_image_selects_bands(tmp_path: Path) -> None:
    data = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    write_geotiff(tmp_path / "i.tif", data)
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif"), data)
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif", [3, 1]), data[[2, 0]])
    with pytest.raises(DataError, match=r"data_source.image_bands: band 5 but image .* 4 bands"):
        read_image(tmp_path / "i.tif", [5])


def test_header_reads_no_pixels(tmp_path: Path) -> None:
    write_geotiff(tmp_path / "m.tif", np.zeros((6, 4, 5), np.uint8), nodata=9)
    header = read_header(tmp_path / "m.tif")
    assert (header.count, header.height, header.width, header.dtype) == (6, 4, 5, "uint8")
    assert header.nodata == 9 and header.size == "5x4"
    assert mask_kind(header.count) == "onehot" and mask_kind(1) == "index"


def test_onehot_all_zero_pixels_are_ignored_not_class_0(tmp_path: Path) -> None:
    onehot = np.zeros((3, 2, 2), np.uint8)
    onehot[0, 0, 0] = 1  # class 0
    onehot[2, 0, 1] = 1  # class 2
    onehot[1, 1, 0] = 1  # class 1; pixel (1, 1) has no class
    write_geotiff(tmp_path / "m.tif", onehot)
    mask = read_mask(tmp_path / "m.tif", None, 3)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, [[0, 2], [1, IGNORE_INDEX]])
    # mask_bands selects classes in order: bands 3 and 1 -> classes 0 and 1
    np.testing.assert_array_equal(
        read_mask(tmp_path / "m.tif", [3, 1], 2), [[1, 0], [IGNORE_INDEX, IGNORE_INDEX]]
    )


def test_onehot_nodata_pixels_are_ignored(tmp_path: Path) -> None:
    onehot = np.array([[[1, 0]], [[0, 1]]], np.uint8)
    onehot[:, 0, 1] = 255
    write_geotiff(tmp_path / "m.tif", onehot, nodata=255)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif", None, 2), [[0, IGNORE_INDEX]])


def test_index_mask_unlabelled_values(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2, 255], [3, 7, 1, 0]], np.uint8)
    write_geotiff(tmp_path / "m.tif", values, nodata=255)
    got = read_mask(tmp_path / "m.tif", None, 3, ignore_index=1)
    # 255 = nodata, 1 = config ignore_index, 3 and 7 >= n_classes
    np.testing.assert_array_equal(got, [[0, -1, 2, -1], [-1, -1, -1, 0]])
    np.testing.assert_array_equal(
        read_mask(tmp_path / "m.tif", [1], 5), [[0, 1, 2, -1], [3, -1, 1, 0]]
    )
    assert index_mask_max(tmp_path / "m.tif") == 7
    assert index_mask_max(tmp_path / "m.tif", ignore_index=7) == 3


def test_index_mask_with_several_mask_bands_is_an_error(tmp_path: Path) -> None:
    write_geotiff(tmp_path / "m.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"data_source.mask_bands: selects 2 bands .* 1 band"):
        read_mask(tmp_path / "m.tif", [1, 2], 2)


def test_mask_band_beyond_count(tmp_path: Path) -> None:
    write_geotiff(tmp_path / "m.tif", np.zeros((6, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"data_source.mask_bands: band 15 but mask .* 6 bands"):
        read_mask(tmp_path / "m.tif", list(range(1, 16)), 15)


def test_unreadable_raster_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(DataError, match=rf"{bad}: cannot read raster"):
        read_image(bad)
    with pytest.raises(DataError, match="cannot read raster"):
        read_header(tmp_path / "missing.tif")
