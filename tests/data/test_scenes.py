"""Scene rows read as windows: the validation grid, random training windows, tile equality."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from landseg.core.files import write_geotiff
from landseg.data.cache import DiskCache
from landseg.data.csvfiles import read_pairs
from landseg.data.dataset import SegmentationDataset
from landseg.data.sampler import SeededSampler, derive_seed
from landseg.data.scenes import (
    LabelSettings,
    SceneDataset,
    grid_offsets,
    read_scene,
    scene_dataset,
)

shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_400.0)
SETTINGS = LabelSettings(
    image_bands=None, mask_bands=None, n_classes=3, class_labels=("a", "b", "c")
)
OPTIONS = {"image_bands": None, "mask_bands": None, "n_classes": 3, "pixel_range": 255.0}


def write_scene(folder: Path, name: str, height: int, width: int, seed: int = 0) -> str:
    """An image (3 bands, nodata 0 in one corner) and an index label raster; the CSV cells."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 256, (3, height, width)).astype(np.uint8)
    image[:, :3, :3] = 0  # nodata: not labelled
    labels = rng.integers(0, 3, (height, width)).astype(np.uint8)
    labels[-2:, :] = 255  # the labels' nodata
    write_geotiff(folder / f"{name}.tif", image, crs=UTM, transform=TRANSFORM, nodata=0)
    write_geotiff(folder / f"{name}_l.tif", labels, crs=UTM, transform=TRANSFORM, nodata=255)
    return f"{name}.tif,{name}_l.tif"


def write_aoi(path: Path, cols: tuple[int, int]) -> Path:
    x0, y0 = TRANSFORM @ (cols[0], 0)
    x1, y1 = TRANSFORM @ (cols[1], 10_000)
    geometry = np.array([shapely.to_wkb(shapely.geometry.box(x0, y1, x1, y0))], dtype=object)
    pyogrio.raw.write(
        path, geometry, [np.array([1])], ["id"], crs=UTM.to_wkt(), geometry_type="Polygon"
    )
    return path


def grid(csv: Path, size: int = 16, stride: int | None = None) -> SceneDataset:
    return scene_dataset(
        read_pairs(csv),
        size=size,
        stride=stride or size,
        samples_per_epoch=None,
        max_nodata=0.5,
        settings=SETTINGS,
        **OPTIONS,
    )


def test_grid_offsets_start_top_left_and_end_flush() -> None:
    assert grid_offsets(70, 32, 32) == [0, 32, 38]
    assert grid_offsets(64, 32, 32) == [0, 32]
    assert grid_offsets(50, 32, 24) == [0, 18]
    assert grid_offsets(32, 32, 8) == [0]


def test_grid_counts_every_labelled_pixel_once(tmp_path: Path) -> None:
    """Overlapping grid windows (a remainder, and a stride below the size) leave each labelled
    pixel of the scene labelled in exactly one window, with its class."""
    csv = tmp_path / "val.csv"
    csv.write_text(write_scene(tmp_path, "s", 45, 38) + "\n")
    with rasterio.open(tmp_path / "s_l.tif") as src:
        labels = src.read(1).astype(np.int64)
    labels[labels == 255] = -1
    labels[:3, :3] = -1  # image nodata
    for stride in (16, 12):
        dataset = grid(csv, 16, stride)
        counts = np.zeros_like(labels)
        for i in range(len(dataset)):
            row, col, height, width = dataset.pairs[i].window
            mask = dataset[i]["mask"].numpy()
            seen = mask >= 0
            counts[row : row + height, col : col + width] += seen
            np.testing.assert_array_equal(
                mask[seen], labels[row : row + height, col : col + width][seen]
            )
        np.testing.assert_array_equal(counts, (labels >= 0).astype(np.int64))


def test_scene_windows_equal_tiles_cut_on_the_same_grid(tmp_path: Path) -> None:
    """The grid of two scenes at the tile size gives exactly the samples of the tiles cut
    from them with rasterio windows (image, mask, nodata alike)."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    rows = [write_scene(scenes, "s1", 32, 48, seed=1), write_scene(scenes, "s2", 48, 32, seed=2)]
    (scenes / "val.csv").write_text("\n".join(rows) + "\n")
    tiles, tile_rows = tmp_path / "tiles", []
    tiles.mkdir()
    for name in ("s1", "s2"):
        with (
            rasterio.open(scenes / f"{name}.tif") as img,
            rasterio.open(scenes / f"{name}_l.tif") as lab,
        ):
            for row in range(0, img.height, 16):
                for col in range(0, img.width, 16):
                    window = Window(col, row, 16, 16)
                    for src, kind in ((img, "i"), (lab, "m")):
                        write_geotiff(
                            tiles / f"{name}_{row}_{col}_{kind}.tif",
                            src.read(window=window),
                            crs=UTM,
                            transform=src.window_transform(window),
                            nodata=src.nodata,
                        )
                    tile_rows.append(f"{name}_{row}_{col}_i.tif,{name}_{row}_{col}_m.tif")
    (tiles / "val.csv").write_text("\n".join(tile_rows) + "\n")
    from_scenes = grid(scenes / "val.csv", 16)
    from_tiles = SegmentationDataset(read_pairs(tiles / "val.csv"), **OPTIONS)
    assert len(from_scenes) == len(from_tiles) == 12
    for i in range(12):
        a, b = from_scenes[i], from_tiles[i]
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        torch.testing.assert_close(a["mask"], b["mask"], rtol=0, atol=0)


def random_windows(csv: Path, max_nodata: float = 0.5, samples: int = 6) -> SceneDataset:
    return scene_dataset(
        read_pairs(csv),
        size=16,
        stride=16,
        samples_per_epoch=samples,
        max_nodata=max_nodata,
        settings=SETTINGS,
        augmentations=["rotation90"],
        seed=5,
        **OPTIONS,
    )


def test_random_windows_are_a_pure_function_of_seed_epoch_index(tmp_path: Path) -> None:
    """A window depends on (seed, epoch, index) alone: a second dataset (another worker) and a
    resumed sampler that skips the first items give the same samples."""
    csv = tmp_path / "train.csv"
    csv.write_text(write_scene(tmp_path, "s", 64, 80) + "\n")
    first, second = random_windows(csv), random_windows(csv)
    assert len(first) == 6
    sampler = SeededSampler(6, seed=5, shuffle=True)
    sampler.set_epoch(3)
    epoch = [first[key] for key in sampler]
    resumed = SeededSampler(6, seed=5, shuffle=True)
    resumed.set_epoch(3)
    resumed.skip_next(4)
    for a, b in zip(epoch[4:], [second[key] for key in resumed], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    images = [s["image"] for s in epoch]
    assert not any(torch.equal(images[0], other) for other in images[1:])
    other_epoch = first[(epoch[0]["index"], derive_seed(5, 4, epoch[0]["index"]))]
    assert not torch.equal(other_epoch["image"], images[0])


def test_random_windows_stay_inside_the_aoi(tmp_path: Path) -> None:
    """With max_nodata 0, no drawn window has a pixel outside the AOI (columns 20-52)."""
    cells = write_scene(tmp_path, "s", 40, 90)
    write_aoi(tmp_path / "aoi.geojson", (20, 52))
    csv = tmp_path / "train.csv"
    csv.write_text(f"{cells},aoi.geojson\n")
    dataset = random_windows(csv, max_nodata=0.0, samples=20)
    reader, windows = dataset.reader, dataset.random
    assert windows is not None
    proposed = [
        windows.propose(np.random.default_rng([derive_seed(5, 0, i), 0x5CE7E]))[1].window[1]
        for i in range(20)
    ]
    assert min(proposed) < 20 or max(proposed) > 36  # first proposals do fall outside
    drawn = [windows.draw(derive_seed(5, 0, i), reader)[0].window[1] for i in range(20)]
    assert all(20 <= col <= 52 - 16 for col in drawn)
    sample = dataset[(3, derive_seed(5, 0, 3))]
    assert sample["mask"].shape == (16, 16)


def test_grid_windows_are_cached_per_window(tmp_path: Path) -> None:
    csv = tmp_path / "val.csv"
    csv.write_text(write_scene(tmp_path, "s", 32, 32) + "\n")
    dataset = grid(csv, 16)
    plain = [dataset[i] for i in range(4)]
    cache = DiskCache(tmp_path / "cache", 10**9, {"n": 3}, 3)
    cache.setup()
    dataset.cache = cache
    for _ in range(2):  # decoded and written, then read back
        for i in range(4):
            torch.testing.assert_close(dataset[i], plain[i], rtol=0, atol=0)
    assert len(list((tmp_path / "cache").rglob("*.tile"))) == 4


def test_a_scene_in_strips_is_warned_about_once(tmp_path: Path, caplog) -> None:
    path = tmp_path / "strips.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=2,
        width=1100,
        count=1,
        dtype="uint8",
        crs=UTM,
        transform=TRANSFORM,
    ) as dst:
        dst.write(np.ones((1, 2, 1100), dtype=np.uint8))
    write_geotiff(tmp_path / "l.tif", np.zeros((2, 1100), np.uint8), crs=UTM, transform=TRANSFORM)
    pair = read_pairs(_csv(tmp_path, "strips.tif,l.tif"))[0]
    with caplog.at_level(logging.WARNING, logger="landseg.data"):
        read_scene(pair)
        read_scene(pair)
    warnings = [
        r.getMessage() for r in caplog.records if "gdal_translate -of COG" in r.getMessage()
    ]
    assert len(warnings) == 1 and str(path) in warnings[0]


def _csv(folder: Path, row: str) -> Path:
    path = folder / "rows.csv"
    path.write_text(row + "\n")
    return path


def test_datamodule_draws_train_windows_and_grids_val(tmp_path: Path, make_config) -> None:
    """With data_source.windows, train has samples_per_epoch random windows (never cached),
    val the grid of its scenes."""
    from landseg.data.datamodule import CsvSegmentationDataModule
    from landseg.data.summary import DataSummary

    (tmp_path / "train.csv").write_text(write_scene(tmp_path, "t", 40, 40) + "\n")
    (tmp_path / "val.csv").write_text(write_scene(tmp_path, "v", 32, 48) + "\n")
    config = make_config(
        tmp_path / "train.csv",
        tmp_path,
        val_file=tmp_path / "val.csv",
        class_labels=["a", "b", "c"],
        cache="memory",
        windows={"size": 16, "samples_per_epoch": 5},
    )
    summary = DataSummary(3, 3, ("a", "b", "c"), "index", (16, 16), "uint8", 255.0)
    module = CsvSegmentationDataModule(config, summary)
    module.setup()
    assert len(module.train_dataset) == 5 and len(module.samplers["train"]) == 5
    assert len(module.val_dataset) == 6 and len(module.samplers["val"]) == 6
    module.build_caches()
    assert module.train_dataset.cache is None and module.val_dataset.cache is not None
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)


def test_random_windows_are_the_same_with_loader_workers(tmp_path: Path) -> None:
    """Two DataLoader workers (each with its own copy of the reader) give the batches of none."""
    from torch.utils.data import DataLoader

    cells = write_scene(tmp_path, "s", 48, 64)
    write_aoi(tmp_path / "aoi.gpkg", (8, 60))
    csv = tmp_path / "train.csv"
    csv.write_text(f"{cells},aoi.gpkg\n")
    dataset = random_windows(csv, samples=8)
    batches = []
    for workers in (0, 2):
        sampler = SeededSampler(8, seed=5, shuffle=True)
        sampler.set_epoch(2)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
        batches.append(list(loader))
    for a, b in zip(*batches, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tile_rows_and_scene_rows_mix(tmp_path: Path) -> None:
    """With windows set, a tile row is a scene of one window: it gives one grid window, the
    tile itself."""
    csv = tmp_path / "val.csv"
    csv.write_text(
        f"{write_scene(tmp_path, 'tile', 16, 16)}\n{write_scene(tmp_path, 's', 32, 40)}\n"
    )
    dataset = grid(csv, 16)
    assert [pair.window for pair in dataset.pairs][:2] == [(0, 0, 16, 16), (0, 0, 16, 16)]
    assert len(dataset) == 1 + 2 * 3
    tile = SegmentationDataset(read_pairs(_csv(tmp_path, "tile.tif,tile_l.tif")), **OPTIONS)
    torch.testing.assert_close(dataset[0], tile[0], rtol=0, atol=0)
