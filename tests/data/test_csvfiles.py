"""CSV rows of image,mask: headers, relative paths, errors, splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from landseg.core.errors import DataError
from landseg.data.csvfiles import (
    TESTING_SUBSET,
    SamplePair,
    load_splits,
    read_pairs,
    split_pairs,
    val_size,
)


def _pairs(n: int) -> list[SamplePair]:
    return [SamplePair(Path(f"i{i}.tif"), Path(f"m{i}.tif"), i + 1) for i in range(n)]


def test_relative_paths_are_relative_to_the_csv_folder(tmp_path: Path, make_dataset) -> None:
    csv_path = make_dataset(tmp_path, n=3)
    pairs = read_pairs(csv_path)
    assert [p.row for p in pairs] == [1, 2, 3]
    assert pairs[0].image == tmp_path / "train" / "img" / "0.tif"
    assert all(p.image.is_file() and p.mask.is_file() for p in pairs)


def test_absolute_paths(tmp_path: Path, make_dataset) -> None:
    pairs = read_pairs(make_dataset(tmp_path, n=2, relative=False))
    assert pairs[1].mask == tmp_path / "train" / "msk" / "1.tif"


def test_header_is_tolerated(tmp_path: Path, make_dataset) -> None:
    pairs = read_pairs(make_dataset(tmp_path, n=2, header=True))
    assert [p.row for p in pairs] == [2, 3]
    assert pairs[0].image.name == "0.tif"


def test_header_names_extra_columns(tmp_path: Path) -> None:
    csv_path = tmp_path / "zones.csv"
    csv_path.write_text("image,mask,zone\na.tif,b.tif,zone1\n\nc.tif,d.tif,zone2\n")
    pairs = read_pairs(csv_path)
    assert [p.extra for p in pairs] == [{"zone": "zone1"}, {"zone": "zone2"}]
    assert [p.row for p in pairs] == [2, 4]


def test_first_row_of_existing_files_is_not_a_header(tmp_path: Path) -> None:
    (tmp_path / "image").write_text("x")
    (tmp_path / "mask").write_text("x")
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("image,mask\n")
    assert read_pairs(csv_path)[0].image == tmp_path / "image"


def test_errors_name_file_and_row(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("a.tif,b.tif\nonly.tif\n,b.tif\nc.tif,\n")
    with pytest.raises(DataError) as info:
        read_pairs(csv_path)
    assert info.value.problems == [
        f"{csv_path}, row 2: one column only; expected 'image,mask'",
        f"{csv_path}, row 3: empty image cell",
        f"{csv_path}, row 4: empty mask cell",
    ]


@pytest.mark.parametrize("text", [None, "", "\n\n", "image,mask\n"])
def test_missing_or_empty_csv(tmp_path: Path, text: str | None) -> None:
    csv_path = tmp_path / "x.csv"
    if text is not None:
        csv_path.write_text(text)
    with pytest.raises(DataError, match=str(csv_path)):
        read_pairs(csv_path)


def test_problems_are_collected_instead_of_raised(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("a.tif,b.tif\nonly.tif\n")
    problems: list[str] = []
    pairs = read_pairs(csv_path, problems)
    assert len(pairs) == 1 and len(problems) == 1


def test_split_is_reproducible_and_complete() -> None:
    pairs = _pairs(20)
    train, val = split_pairs(pairs, 0.3, seed=7)
    assert len(val) == 6 and len(train) == 14
    assert sorted(p.row for p in train + val) == list(range(1, 21))
    assert split_pairs(pairs, 0.3, seed=7) == (train, val)
    assert split_pairs(pairs, 0.3, seed=8) != (train, val)
    assert [p.row for p in val] == sorted(p.row for p in val)  # CSV order kept


def test_val_size_rounds_half_up() -> None:
    assert val_size(5, 0.3) == 2
    assert val_size(1, 0.3) == 0
    assert val_size(3, 0.5) == 2


def test_load_splits_testing_subset(tmp_path: Path, make_dataset) -> None:
    train = make_dataset(tmp_path, n=12, size=8, name="train")
    test = make_dataset(tmp_path, n=10, size=8, name="test")
    splits = load_splits(train, None, test, percentage_val=0.25, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 9, "val": 3, "test": 10}
    small = load_splits(train, None, test, percentage_val=0.25, seed=1, testing=True)
    assert small["train"] == splits["train"][:TESTING_SUBSET]
    assert small["val"] == splits["val"] and small["test"] == splits["test"][:TESTING_SUBSET]


def test_load_splits_reports_every_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_splits(tmp_path / "a.csv", tmp_path / "b.csv", None, percentage_val=0.3, seed=0)
    assert len(info.value.problems) == 2
