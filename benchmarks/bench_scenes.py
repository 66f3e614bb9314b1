"""Windows per second read from whole scenes against the same pixels as pre-cut tiles.

A Massachusetts scene (``../shared/data/massachusetts-buildings``, 1182x901, 3-band uint8) and
its building raster are written ``--copies`` times as

* a tiled COG (DEFLATE, ``--block`` px blocks, no overviews) and
* a GeoTIFF in strips (DEFLATE, not tiled: what the slow-read warning is about),

and the grid that validation reads (``--size`` px windows, stride ``--size``) is cut from
them into tiles as ``landseg tiles`` writes them (DEFLATE GeoTIFFs, one-hot masks). Each
loader then reads every window once per epoch through a torch DataLoader with the same batch
size and workers, uncached (``cache: none``; every window opens its files again, so GDAL's
block cache does not carry pixels over): the tiles (:class:`SegmentationDataset`), the COG
scene rows and the strip scene rows (:class:`SceneDataset` grid), and random windows on the
COG (as many per epoch as the grid has). The page cache is warmed first; the figure is the
median epoch over ``--repeats``.

    python -m benchmarks.bench_scenes --copies 4 --size 256 --repeats 5 --workers 0 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from torch.utils.data import DataLoader

from benchmarks.common import add_threads_argument, apply_threads, load_average, median, report
from landseg.core.files import write_geotiff
from landseg.data.csvfiles import read_pairs
from landseg.data.dataset import SegmentationDataset
from landseg.data.sampler import derive_seed
from landseg.data.scenes import LabelSettings, WindowReader, grid_windows, read_scene, scene_dataset

SCENE = "22978945_15"
CLASSES = ("background", "building")
SETTINGS = LabelSettings(image_bands=None, mask_bands=None, n_classes=2, class_labels=CLASSES)
OPTIONS: dict[str, Any] = {
    "image_bands": None,
    "mask_bands": None,
    "n_classes": 2,
    "pixel_range": 255.0,
}


def write_scenes(source: Path, folder: Path, copies: int, block: int) -> dict[str, Path]:
    """CSV files of scene rows: the COG copies and the strip copies, with their labels."""
    with rasterio.open(source / f"{SCENE}.tif") as src:
        pixels, profile = src.read(), src.profile
    with rasterio.open(source / f"{SCENE}_buildings.tif") as src:
        labels = src.read()
    base = {
        "crs": profile["crs"],
        "transform": profile["transform"],
        "width": profile["width"],
        "height": profile["height"],
        "compress": "deflate",
    }
    rows: dict[str, list[str]] = {"cog": [], "strips": []}
    for copy in range(copies):
        for kind in rows:
            for name, data, nodata in (("img", pixels, profile["nodata"]), ("lbl", labels, None)):
                path = folder / kind / f"{name}{copy}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                layout: dict[str, Any] = (
                    {"driver": "COG", "blocksize": block, "overviews": "NONE"}
                    if kind == "cog"
                    else {"driver": "GTiff", "tiled": False}
                )
                with rasterio.open(
                    path,
                    "w",
                    **base,
                    **layout,
                    count=data.shape[0],
                    dtype=data.dtype,
                    nodata=nodata,
                ) as dst:
                    dst.write(data)
            rows[kind].append(f"{kind}/img{copy}.tif,{kind}/lbl{copy}.tif")
    csvs = {}
    for kind, lines in rows.items():
        csvs[kind] = folder / f"{kind}.csv"
        csvs[kind].write_text("\n".join(lines) + "\n")
    return csvs


def cut_tiles(csv: Path, folder: Path, size: int) -> Path:
    """The grid's windows as ``landseg tiles`` writes them (the same reader, DEFLATE tiles)."""
    reader = WindowReader(SETTINGS)
    rows = []
    for index, pair in enumerate(
        grid_windows([read_scene(p) for p in read_pairs(csv)], size, size)
    ):
        row, col, height, width = pair.window
        _, classes, _ = reader.read(pair)
        with rasterio.open(pair.image) as src:
            pixels = src.read(window=rasterio.windows.Window(col, row, width, height))
            transform, crs, nodata = (
                src.window_transform(rasterio.windows.Window(col, row, width, height)),
                src.crs,
                src.nodata,
            )
        onehot = (classes[None] == np.arange(2)[:, None, None]).astype(np.uint8)
        name = f"t{index:04d}.tif"
        write_geotiff(folder / "img" / name, pixels, crs=crs, transform=transform, nodata=nodata)
        write_geotiff(folder / "msk" / name, onehot, crs=crs, transform=transform)
        rows.append(f"img/{name},msk/{name}")
    (folder / "tiles.csv").write_text("\n".join(rows) + "\n")
    return folder / "tiles.csv"


def epoch_seconds(dataset: Any, batch_size: int, workers: int, epoch: int) -> float:
    """One pass over the dataset, each sample keyed by its (index, sample seed) as in training."""
    keys = [(i, derive_seed(7, epoch, i)) for i in range(len(dataset))]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=keys,  # type: ignore[arg-type]
        num_workers=workers,
        persistent_workers=False,
    )
    start = time.perf_counter()
    for batch in loader:
        assert batch["image"].shape[0] > 0
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/massachusetts-buildings"))
    parser.add_argument("--copies", type=int, default=4, help="scene copies (rows) per CSV")
    parser.add_argument("--size", type=int, default=256, help="window and tile size, px")
    parser.add_argument("--block", type=int, default=256, help="the COG's block size, px")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_scenes_") as tmp:
        folder = Path(tmp)
        csvs = write_scenes(args.data, folder, args.copies, args.block)
        tiles = SegmentationDataset(
            read_pairs(cut_tiles(csvs["cog"], folder / "tiles", args.size)), **OPTIONS
        )
        grid = {"size": args.size, "stride": args.size, "max_nodata": 0.5, "settings": SETTINGS}
        loaders = {
            "tiles": tiles,
            "scene_cog": scene_dataset(
                read_pairs(csvs["cog"]), samples_per_epoch=None, **grid, **OPTIONS
            ),
            "scene_strips": scene_dataset(
                read_pairs(csvs["strips"]), samples_per_epoch=None, **grid, **OPTIONS
            ),
            "random_cog": scene_dataset(
                read_pairs(csvs["cog"]), samples_per_epoch=len(tiles), **grid, **OPTIONS
            ),
        }
        for dataset in loaders.values():  # warm the page cache and the imports
            epoch_seconds(dataset, args.batch_size, args.workers, 0)
        times: dict[str, list[float]] = {name: [] for name in loaders}
        for repeat in range(args.repeats):  # interleaved, so load changes hit every loader
            for name, dataset in loaders.items():
                times[name].append(
                    epoch_seconds(dataset, args.batch_size, args.workers, repeat + 1)
                )
    rates = {name: len(loaders[name]) / median(seconds) for name, seconds in times.items()}
    report(
        "bench_scenes",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "windows_per_epoch": len(tiles),
            "epoch_seconds": {
                name: [round(s, 4) for s in seconds] for name, seconds in times.items()
            },
            "windows_per_second": {name: round(rate, 1) for name, rate in rates.items()},
            "ratio_to_tiles": {
                name: round(rate / rates["tiles"], 3) for name, rate in rates.items()
            },
        },
        load_before,
    )


if __name__ == "__main__":
    main()
