"""Tiles per second through landseg's dataset and DataLoader against a bare rasterio reader.

Both read the same Dubai tiles (256x256, 3-band uint8 JPEG-in-GeoTIFF images, 6-band one-hot
masks) with the same batch size and workers, shuffled; the page cache is warmed first. The
bare reader is rasterio, ``/ 255`` and an argmax of the one-hot mask, nothing else
(:class:`benchmarks.common.BareTiles`). Then each stage of a landseg sample is timed alone,
in this process, with landseg's own functions: per-sample seed, image decode, mask decode
(with the one-hot to class conversion), scaling, each augmentation, standardisation and
collation.

    python -m benchmarks.bench_data --tiles 64 --repeats 5 --workers 0 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from benchmarks.common import (
    Row,
    add_threads_argument,
    apply_threads,
    bare_loader,
    dubai_config,
    dubai_rows,
    load_average,
    median,
    onehot_to_index,
    read_pair,
    report,
)

AUGMENTATIONS = ["rotation90", "radiometry"]


def landseg_loader(
    folder: Path, rows: list[Row], batch_size: int, workers: int, augment: list[str]
) -> ScaledLoader:
    """The train loader that ``landseg train`` builds for these rows."""
    from landseg.data.datamodule import CsvSegmentationDataModule
    from landseg.planning.prepare import prepare

    config = dubai_config(folder, rows, rows[:1], batch_size=batch_size, workers=workers)
    # decoding is what is compared with the bare reader: no decoded-tile cache (bench_cache
    # measures the cache), or every repeat after the first would read decoded arrays
    config["data_source"]["cache"] = "none"
    if augment:
        config["data_source"]["data_augmentation"] = {"train": augment}
    path = folder / "data.json"
    path.write_text(json.dumps(config))
    prepared = prepare(path, [])
    checked, summary = prepared.config, prepared.summary
    module = CsvSegmentationDataModule(checked, summary)
    return ScaledLoader(module.train_dataloader(), module.scaler("train"))


class ScaledLoader:
    """The loader's batches as training gets them: a compact batch (uint8 sent by the
    workers, landseg.data.transport) is scaled in this process, as on the CPU device."""

    def __init__(self, loader: DataLoader, scale: Any):
        self.loader, self.scale = loader, scale

    def __iter__(self) -> Iterator[Any]:
        return (self.scale(batch) for batch in self.loader)


def tiles_per_second(loader: Iterable[Any], tiles: int) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return tiles / (time.perf_counter() - start)


class Stopwatch:
    """Seconds spent per named stage: ``with watch("decode"): ...``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.totals[name] += time.perf_counter() - start


def stage_times(rows: list[Row], repeats: int, batch_size: int) -> dict[str, float]:
    """Milliseconds per tile of each stage, the median over ``repeats`` passes."""
    from landseg.config.schema import SplitStats
    from landseg.data.augmentations import AUGMENTATIONS as REGISTRY
    from landseg.data.normalization import scale, standardize
    from landseg.data.raster import read_image, read_mask
    from landseg.data.sampler import derive_seed

    stats = SplitStats(mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2])
    augmentations = [(name, REGISTRY.get(name)) for name in AUGMENTATIONS]
    passes: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        watch = Stopwatch()
        samples = []
        for index, (image_path, mask_path) in enumerate(rows):
            with watch("bare: rasterio read (image + mask)"):
                raw, onehot = read_pair(image_path, mask_path)
            with watch("bare: / 255 and argmax"):
                _ = raw.astype(np.float32) / 255, onehot_to_index(onehot)
            with watch("landseg: per-sample seed"):
                rng = np.random.default_rng(derive_seed(0, 0, index))
            with watch("landseg: decode image"):
                image = read_image(image_path, None)
            with watch("landseg: decode mask + one-hot to class"):
                mask = read_mask(mask_path, None, 6)
            with watch("landseg: scale to 0-1"):
                image = scale(image, 255.0)
            for name, augment in augmentations:
                with watch(f"landseg: augment {name}"):
                    image, mask = augment(image, mask, rng)
            with watch("landseg: standardise (mean/std)"):
                image = standardize(image, stats)
            with watch("landseg: to tensors"):
                samples.append(
                    {
                        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                        "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
                        "index": index,
                    }
                )
        for start in range(0, len(samples), batch_size):
            with watch("landseg: collate"):
                default_collate(samples[start : start + batch_size])
        for name, total in watch.totals.items():
            passes[name].append(total / len(rows) * 1000)
    return {name: round(median(values), 3) for name, values in passes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=64, help="Dubai train tiles")
    parser.add_argument("--repeats", type=int, default=5, help="passes of each (median)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    load_before = load_average()
    rows = dubai_rows("train", args.tiles)
    throughput: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for workers in args.workers:
            loaders: dict[str, Any] = {
                "bare": bare_loader(rows, args.batch_size, workers, shuffle=True),
                "landseg": landseg_loader(Path(tmp), rows, args.batch_size, workers, []),
                "landseg+augment": landseg_loader(
                    Path(tmp), rows, args.batch_size, workers, AUGMENTATIONS
                ),
            }
            tiles_per_second(loaders["bare"], len(rows))  # warm the page cache
            rates: dict[str, list[float]] = defaultdict(list)
            for _ in range(args.repeats):  # alternate, so a change of load hits all alike
                for name, loader in loaders.items():
                    rates[name].append(tiles_per_second(loader, len(rows)))
            medians = {name: round(median(values), 1) for name, values in rates.items()}
            throughput[f"workers={workers}"] = {
                "tiles_per_s": medians,
                "landseg_vs_bare": round(medians["landseg"] / medians["bare"], 3),
                "landseg+augment_vs_bare": round(medians["landseg+augment"] / medians["bare"], 3),
                "load": load_average(),
            }
    result = {
        "setup": {"tiles": args.tiles, "batch_size": args.batch_size, "repeats": args.repeats},
        "throughput": throughput,
        "stages_ms_per_tile": stage_times(rows, args.repeats, args.batch_size),
    }
    report("data", result, load_before)


if __name__ == "__main__":
    main()
