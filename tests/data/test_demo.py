"""The generated demo dataset: valid rasters, one-hot masks, usable CSVs and config."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from landseg.cli.main import build_parser
from landseg.config.schema import LandsegConfig
from landseg.core.errors import LandsegError
from landseg.data.demo import MARKER, demo_data_command, write_demo_dataset


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo, written once for the module."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


def _rows(csv_path: Path) -> list[list[str]]:
    with open(csv_path, newline="") as handle:
        return list(csv.reader(handle))


def _pairs(config: Path) -> list[tuple[Path, Path]]:
    """Every (image, mask) of the three splits, resolved against the CSV's folder."""
    pairs = []
    for split in ("train", "val", "test"):
        csv_path = config.parent / f"{split}.csv"
        pairs += [(csv_path.parent / img, csv_path.parent / msk) for img, msk in _rows(csv_path)]
    return pairs


def _digest(config: Path) -> str:
    digest = hashlib.sha256()
    for img, msk in sorted(_pairs(config)):
        for path in (img, msk):
            with rasterio.open(path) as src:
                digest.update(src.read().tobytes())
    return digest.hexdigest()


def test_config_validates_and_points_at_the_csvs(demo: Path) -> None:
    raw = json.loads(demo.read_text())
    config = LandsegConfig.model_validate(raw).resolve_paths(demo.parent)
    data = config.data_source
    assert data.class_labels == ["water", "vegetation", "bare soil", "building"]
    assert data.mask_bands == [1, 2, 3, 4]
    assert data.image_bands == [1, 2, 3, 4]
    for path in (data.train_file, data.val_file, data.test_file):
        assert path is not None and path.is_file()
    assert config.output_setup.output_folder == (demo.parent / "runs").resolve()
    assert raw["train_setup"]["model_name"] == "lightunet"
    assert raw["device_setup"] == {"accelerator": "cpu", "num_workers": 0}


def test_splits_cover_every_tile_once(demo: Path) -> None:
    sizes = {split: len(_rows(demo.parent / f"{split}.csv")) for split in ("train", "val", "test")}
    assert sizes == {"train": 28, "val": 10, "test": 10}
    pairs = _pairs(demo)
    assert len(set(pairs)) == 48
    assert all(img.is_file() and msk.is_file() for img, msk in pairs)


def test_zones_csv(demo: Path) -> None:
    header, *rows = _rows(demo.parent / "zones.csv")
    assert header == ["image", "mask", "zone"]
    assert len(rows) == 48
    zones = [row[2] for row in rows]
    assert sorted(set(zones)) == ["1", "2", "3"]
    assert all(zones.count(zone) == 16 for zone in set(zones))


def test_rasters_are_georeferenced_and_masks_one_hot(demo: Path) -> None:
    origins = set()
    counts = np.zeros(4, dtype=np.int64)
    unlabelled = 0
    for img, msk in _pairs(demo):
        with rasterio.open(img) as src:
            assert (src.count, src.width, src.height) == (4, 64, 64)
            assert src.dtypes == ("uint8",) * 4
            assert src.crs.to_epsg() == 32631
            assert src.transform.a == 0.5 and src.transform.e == -0.5
            origins.add((src.transform.c, src.transform.f))
            transform = src.transform
        with rasterio.open(msk) as src:
            mask = src.read()
            assert src.count == 4 and src.dtypes == ("uint8",) * 4
            assert src.transform == transform and src.crs.to_epsg() == 32631
        assert set(np.unique(mask)) <= {0, 1}
        per_pixel = mask.sum(axis=0)
        assert per_pixel.max() == 1  # never two classes on one pixel
        unlabelled += int((per_pixel == 0).sum())
        counts += mask.reshape(4, -1).sum(axis=1, dtype=np.int64)
    assert len(origins) == 48  # every tile at its own place
    total = 48 * 64 * 64
    assert 0 < unlabelled < 0.01 * total
    shares = counts / counts.sum()
    assert shares.min() > 0.05, shares


def test_deterministic_from_the_seed(demo: Path, tmp_path: Path) -> None:
    again = write_demo_dataset(tmp_path / "again")
    assert _digest(again) == _digest(demo)
    for name in ("train.csv", "val.csv", "test.csv", "zones.csv", "demo.json"):
        assert (again.parent / name).read_bytes() == (demo.parent / name).read_bytes()
    other = write_demo_dataset(tmp_path / "other", seed=1)
    assert _digest(other) != _digest(demo)


def test_fewer_classes_and_a_custom_size(tmp_path: Path) -> None:
    config = write_demo_dataset(tmp_path / "small", n_tiles=5, size=32, n_classes=2)
    raw = json.loads(config.read_text())
    assert raw["data_source"]["class_labels"] == ["water", "vegetation"]
    pairs = _pairs(config)
    assert len(pairs) == 5
    with rasterio.open(pairs[0][1]) as src:
        assert (src.count, src.width) == (2, 32)


def test_default_is_the_small_documented_dataset(demo: Path) -> None:
    """The defaults (what ``landseg demo-data DIR`` writes) are a few small tiles: 48 of 64 px."""
    folder = demo.parent
    marker = json.loads((folder / MARKER).read_text())
    assert marker == {"landseg_demo": {"n_tiles": 48, "size": 64, "n_classes": 4, "seed": 0}}
    args = build_parser().parse_args(["demo-data", str(folder)])
    assert (args.tiles, args.size, args.seed) == (48, 64, 0)  # the CLI's defaults are the same
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    tiles = [path for image, mask, _ in _rows(folder / "zones.csv")[1:] for path in (image, mask)]
    assert len(set(tiles)) == 2 * 48
    expected = [MARKER, "demo.json", "test.csv", "train.csv", "val.csv", "zones.csv", *tiles]
    assert files == sorted(expected)
    raw_pixels = 48 * 64 * 64 * (4 + 4)  # uint8 image and mask bands: 1.5 MiB
    assert sum((folder / f).stat().st_size for f in files) < raw_pixels + 512 * 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_tiles": 2}, "n_tiles"),
        ({"size": 40}, "multiple of 16"),
        ({"n_classes": 5}, "n_classes"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(LandsegError, match=message):
        write_demo_dataset(tmp_path / "bad", **kwargs)


def test_command_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LandsegError) as info:
        demo_data_command(tmp_path, n_tiles=4, size=16, seed=0)
    assert len(info.value.problems) == 1 and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "notes").write_text("a file, not a folder")
    with pytest.raises(LandsegError, match="not a folder"):
        demo_data_command(tmp_path / "notes", n_tiles=4, size=16, seed=0)


def test_command_rewrites_its_own_demo(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    demo_data_command(folder, n_tiles=9, size=16, seed=0)
    config = demo_data_command(folder, n_tiles=4, size=16, seed=3)  # a demo folder: allowed
    assert len(_pairs(config)) == 4
    assert len(list((folder / "img").glob("*.tif"))) == 4  # stale tiles removed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo_data_command(empty, n_tiles=4, size=16, seed=0).is_file()
