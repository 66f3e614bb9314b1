"""CSV files of ``image,mask`` rows (ODEON's train tool, section Data source) and the splits built
from them.

Rules:

* one row per sample: ``image,mask`` and optionally more columns; no header is needed;
* a header line is tolerated: the first row counts as a header when none of its cells is an
  existing file and every cell looks like a column name (``image,mask`` or ``image,mask,zone``);
  its names then key the extra columns of every row (:attr:`SamplePair.extra`, e.g. ``zone``
  for group-wise cross-validation); without a header, extra columns are ignored; the columns
  stay positional, so a header that names the mask column first is refused;
* paths are absolute or relative to the CSV file's own folder (not the working directory);
* blank lines are skipped.

Problems are :class:`~landseg.core.errors.DataError` lines naming the CSV file and its 1-based row.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from landseg.core.errors import DataError

#: ``train_setup.testing: true`` keeps the first this many pairs of every split (after the split).
TESTING_SUBSET = 8

_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ -]*$")


@dataclass(frozen=True)
class SamplePair:
    """One image/mask row; ``row`` is the 1-based line in the CSV, for error messages."""

    image: Path
    mask: Path
    row: int
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    csv: Path | None = field(default=None, compare=False)
    #: A scene row's area of interest (``data_source.windows``; :mod:`landseg.data.scenes`):
    #: the header's ``aoi`` column, or else the third column. Unused for tile rows.
    aoi: Path | None = field(default=None, compare=False)

    def cache_text(self) -> str:
        """What names this row's decoded pixels in a cache key: its files."""
        return f"{os.path.abspath(self.image)}\n{os.path.abspath(self.mask)}"

    def sources(self) -> list[Path]:
        """The files whose change makes a cached decoding stale."""
        return [self.image, self.mask]

    def where(self) -> str:
        """``file.csv, row N``: how every problem names its row."""
        return f"{self.csv}, row {self.row}" if self.csv else f"row {self.row}"


#: Header names of the first two columns that say they are in the other order.
_MASK_NAMES = frozenset({"mask", "masks", "msk", "label", "labels"})
_IMAGE_NAMES = frozenset({"image", "images", "img"})


def _is_header(cells: list[str], folder: Path) -> bool:
    return all(
        _COLUMN_NAME.match(cell) and not (folder / cell).is_file() for cell in cells if cell
    ) and all(cells)


def read_pairs(
    csv_path: str | Path, problems: list[str] | None = None, key: str | None = None
) -> list[SamplePair]:
    """Read the rows of one CSV file.

    With ``problems`` given, each problem is appended to it and the valid rows are returned,
    so a caller can report every problem of every file at once; otherwise a
    :class:`DataError` listing all problems of this file is raised.
    """
    csv_path = Path(csv_path).expanduser().absolute()
    found: list[str] = []
    pairs: list[SamplePair] = []
    if not csv_path.is_file():
        what = "is a folder, not a CSV file" if csv_path.is_dir() else "CSV file does not exist"
        where = (
            f"{key}: {csv_path}: {what} (a relative path in a config is taken from the "
            "config file's folder)"
            if key
            else f"{csv_path}: {what}"
        )
        found.append(where)
    else:
        folder = csv_path.parent
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as handle:
                rows = [
                    (number, [cell.strip() for cell in cells])
                    for number, cells in enumerate(csv.reader(handle), start=1)
                    if any(cell.strip() for cell in cells)
                ]
        except UnicodeDecodeError as error:
            line = csv_path.read_bytes()[: error.start].count(b"\n") + 1
            found.append(f"{csv_path}, row {line}: not UTF-8 text (byte {error.start})")
            rows = []
        except OSError as error:
            found.append(f"{csv_path}: cannot read CSV file ({error.strerror or error})")
            rows = []
        names: list[str] = []
        if rows and _is_header(rows[0][1], folder):
            number, names = rows.pop(0)
            swapped = [name.lower() for name in names[:2]]
            if len(swapped) == 2 and swapped[0] in _MASK_NAMES and swapped[1] in _IMAGE_NAMES:
                found.append(
                    f"{csv_path}, row {number}: the header puts {names[0]} before {names[1]}, "
                    "but the columns are read by position, image then mask (ODEON's order): "
                    "put the image column first"
                )
                rows = []
        for number, cells in rows:
            if len(cells) < 2:
                found.append(f"{csv_path}, row {number}: one column only; expected 'image,mask'")
            elif not cells[0] or not cells[1]:
                column = "image" if not cells[0] else "mask"
                found.append(f"{csv_path}, row {number}: empty {column} cell")
            else:
                extra = dict(zip(names[2:], cells[2:], strict=False))
                aoi = extra.get("aoi") if names else (cells[2] if len(cells) > 2 else None)
                pairs.append(
                    SamplePair(
                        folder / Path(cells[0]).expanduser(),
                        folder / Path(cells[1]).expanduser(),
                        number,
                        extra,
                        csv_path,
                        folder / Path(aoi).expanduser() if aoi else None,
                    )
                )
        if not rows and not found:
            found.append(f"{csv_path}: CSV file has no image,mask rows")
    if problems is not None:
        problems.extend(found)
    elif found:
        raise DataError(found)
    return pairs


def val_size(n_pairs: int, fraction: float) -> int:
    """How many of ``n_pairs`` the validation split gets: ``fraction`` of them, rounded half up."""
    return math.floor(n_pairs * fraction + 0.5)


def split_pairs(
    pairs: list[SamplePair], fraction: float, seed: int
) -> tuple[list[SamplePair], list[SamplePair]]:
    """Hold out ``fraction`` of ``pairs`` for validation, reproducibly from ``seed``.

    Both splits keep the CSV order, so the result depends only on the rows and the seed.
    """
    held_out = set(
        np.random.default_rng(seed).permutation(len(pairs))[: val_size(len(pairs), fraction)]
    )
    train = [pair for i, pair in enumerate(pairs) if i not in held_out]
    val = [pair for i, pair in enumerate(pairs) if i in held_out]
    return train, val


def testing_subset(splits: dict[str, list[SamplePair]]) -> dict[str, list[SamplePair]]:
    """The first :data:`TESTING_SUBSET` pairs of every split (``train_setup.testing``)."""
    return {name: pairs[:TESTING_SUBSET] for name, pairs in splits.items()}


def load_splits(
    train_file: Path,
    val_file: Path | None,
    test_file: Path | None,
    *,
    percentage_val: float,
    seed: int,
    testing: bool = False,
    problems: list[str] | None = None,
) -> dict[str, list[SamplePair]]:
    """The pairs of every split: ``train``, ``val`` and (with a test file) ``test``.

    Without ``val_file`` the validation split is ``percentage_val`` of the train file
    (:func:`split_pairs`). ``testing`` keeps the first :data:`TESTING_SUBSET` pairs of each
    split, after the split, so a debug run sees the same few samples every time.
    ``problems`` behaves as in :func:`read_pairs`.
    """
    found: list[str] = []
    splits = {"train": read_pairs(train_file, found, "data_source.train_file")}
    if val_file is not None:
        splits["val"] = read_pairs(val_file, found, "data_source.val_file")
    else:
        splits["train"], splits["val"] = split_pairs(splits["train"], percentage_val, seed)
    if test_file is not None:
        splits["test"] = read_pairs(test_file, found, "data_source.test_file")
    if testing:
        splits = testing_subset(splits)
    if problems is not None:
        problems.extend(found)
    elif found:
        raise DataError(found)
    return splits
