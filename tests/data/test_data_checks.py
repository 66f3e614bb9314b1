"""check_data: the summary it returns, and every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landseg.core.errors import DataError
from landseg.core.files import write_geotiff
from landseg.data import checks
from landseg.data.checks import check_data

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _problems(config) -> list[str]:
    with pytest.raises(DataError) as info:
        check_data(config)
    return info.value.problems


def test_summary_of_a_onehot_dataset(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=10, classes=4)
    test = make_dataset(tmp_path, n=3, classes=4, name="test")
    summary = check_data(make_config(train, tmp_path, test_file=test, mask_bands=[1, 2, 4]))
    assert summary.n_image_bands == 3 and summary.n_classes == 3
    assert summary.class_labels == ("class 1", "class 2", "class 3")
    assert summary.mask_kind == "onehot" and summary.patch_size == (32, 32)
    assert summary.image_dtype == "uint8" and summary.pixel_range == 255.0
    assert summary.split_sizes == {"train": 7, "val": 3, "test": 3}
    assert summary.report == (
        "checked 13 rows in 2 CSV files: headers of 26 rasters (no pixels read)"
    )


def test_index_masks_count_classes_from_few_masks(
    tmp_path: Path, make_dataset, make_config
) -> None:
    train = make_dataset(tmp_path, n=4, classes=5, mask="index", nodata=255)
    summary = check_data(make_config(train, tmp_path, image_bands=[2]))
    assert summary.mask_kind == "index" and summary.n_classes == 5 and summary.n_image_bands == 1
    assert "pixels of 4 index masks read" in summary.report
    labelled = check_data(make_config(train, tmp_path, class_labels=list("abcdef")))
    assert labelled.n_classes == 6 and labelled.class_labels == tuple("abcdef")


def test_index_masks_need_class_labels_beyond_the_limit(
    tmp_path: Path, make_dataset, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checks, "MAX_MASKS_READ", 3)
    train = make_dataset(tmp_path, n=4, size=8, mask="index")
    assert any(
        line.startswith("data_source.class_labels is required")
        for line in _problems(make_config(train, tmp_path))
    )


def test_uint16_needs_pixel_range(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=4, size=8, dtype="uint16")
    [line] = _problems(make_config(train, tmp_path))
    assert line.startswith("data_source.pixel_range is required for uint16 images")
    assert str(tmp_path / "train" / "img") in line
    assert check_data(make_config(train, tmp_path, pixel_range=4095)).pixel_range == 4095.0


def test_every_problem_at_once(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=6, size=16, classes=3)
    val = make_dataset(tmp_path, n=3, size=16, classes=3, name="val")
    (tmp_path / "val" / "img" / "0.tif").unlink()
    (tmp_path / "val" / "img" / "1.tif").write_bytes(b"junk")
    write_geotiff(tmp_path / "val" / "img" / "2.tif", np.zeros((3, 8, 8), np.uint8))
    with open(train, "a") as handle:
        handle.write("lonely.tif\n")
    config = make_config(
        train,
        tmp_path,
        val_file=val,
        test_file=tmp_path / "nope.csv",
        image_bands=[1, 4],
        mask_bands=[1, 2, 3, 5],
        class_labels=["a", "b"],
        normalization_weights={"val": {"mean": [0.5] * 3, "std": [0.2] * 3}},
        train_setup={"class_imbalance": [1, 1, 1]},
    )
    problems = _problems(config)
    text = "\n".join(problems)
    expected = [
        f"{train}, row 7: one column only",
        f"data_source.test_file: {tmp_path / 'nope.csv'}: CSV file does not exist",
        f"{val}, row 1: image {tmp_path / 'val' / 'img' / '0.tif'} does not exist",
        f"{val}, row 2: {tmp_path / 'val' / 'img' / '1.tif'}: cannot read raster",
        f"{val}, row 3: image {tmp_path / 'val' / 'img' / '2.tif'} is 8x8 but mask",
        "data_source.image_bands: band 4 but image",
        "data_source.mask_bands: band 5 but mask",
        "patch sizes (height, width) differ in train and val: (16, 16) (e.g. ",
        "data_source.normalization_weights.val.mean has 3 values but 2 image bands are used",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    assert sum(line.startswith("data_source.image_bands") for line in problems) == 7
    # the class weights are the loss's rule, and labels against mask_bands the config's:
    # each is checked once, by landseg.planning.prepare
    assert "class_imbalance" not in text and "class_labels" not in text


def test_many_identical_problems_are_capped(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=14, size=8)
    problems = _problems(make_config(train, tmp_path, image_bands=[9]))
    assert len([p for p in problems if p.startswith("data_source.image_bands")]) == 10
    assert problems[-1] == "... and 4 more problems of this kind (image_bands)"


def test_percentage_val_must_leave_a_val_row(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=1, size=8)
    [line] = _problems(make_config(train, tmp_path, percentage_val=0.3))
    assert line.startswith("data_source.percentage_val: 0.3 of the 1 rows")


def test_mixed_masks_and_dtypes(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=4, size=8)
    val = make_dataset(tmp_path, n=2, size=8, mask="index", dtype="float32", name="val")
    problems = _problems(make_config(train, tmp_path, val_file=val))
    # uint8 (255) and float32 (as is) tiles: both scalings known, so they may mix
    assert not any(p.startswith(("images have", "data_source.pixel_range")) for p in problems)
    assert any(p.startswith("masks mix single-band class-index and multi-band") for p in problems)


def test_index_mask_with_mask_bands(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=2, size=8, mask="index")
    problems = _problems(make_config(train, tmp_path, mask_bands=[1, 2], class_labels=["a", "b"]))
    assert problems[0].startswith("data_source.mask_bands: selects 2 bands but mask")
