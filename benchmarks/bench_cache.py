"""Tiles per second of landseg's train loader from the second epoch, with and without the cache.

The loader is the one ``landseg train`` builds (the csv datamodule, its sampler and workers) on
``--tiles`` Dubai train tiles (256x256 JPEG-in-GeoTIFF images, one-hot masks), for each
``data_source.cache`` (none, disk, memory), without augmentations and then with rotation90 and
radiometry, for each number of workers. Every configuration gets a fresh output folder, so the
disk cache starts empty; the first epoch fills it, the next ``--epochs - 1`` are timed (the
median is reported). The source files are read once beforehand, so none of the three reads
them from the disk.

Then the memory the disk cache costs: the same loader over ``--factor``-times as many distinct
rows (symbolic links with their own names to the same tiles, so every row is a cache entry of
its own). RssAnon (anonymous memory: what a process owns, not the page cache) and RssShmem of
the main process and of every worker are read from ``/proc/PID/status`` every few batches of a
filling and of a reading epoch; the largest are reported. They must not grow with the rows.
Last, the per-tile cost of a decode and of a cache hit, in this process.

Also the ceiling: the same loader over one ready-made sample handed out again, which is what
the sampler, the collation, the transfer from the workers and their start every epoch allow.

With workers, the compact loaders too (uint8 images and int8 classes from the workers,
landseg.data.transport): as a GPU receives them, and scaled in this process, as a CPU run
scales them (numpy, what landseg does on the CPU; and torch, what it does on a GPU). A line
on stdout gives the ratio that matters for a CPU run: its cached loader (compact when
``COMPACT_ON_CPU``) against the uncached one. ``--train-tiles N`` also times epochs of
``landseg train`` on the CPU with compact batches on and off, runs alternated.

    python -m benchmarks.bench_cache --tiles 864 --epochs 4 --workers 0 2 --factors 1 10
    python -m benchmarks.bench_cache --only-train --train-tiles 96 --train-rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import (
    Row,
    add_threads_argument,
    apply_threads,
    dubai_config,
    dubai_rows,
    load_average,
    median,
    read_pair,
    report,
)

AUGMENTATIONS = ["rotation90", "radiometry"]


def build_module(
    folder: Path,
    rows: Sequence[Row],
    *,
    cache: str,
    workers: int,
    batch_size: int,
    augment: Sequence[str] = (),
    compact: bool = False,
    scale_here: bool | str = True,
) -> Any:
    """The datamodule ``landseg train`` builds, its train loader ready (caches set up).

    ``compact``: the loader sends uint8 batches, as on a GPU (landseg.data.transport);
    ``scale_here``: such batches are scaled in this process (the CPU device), else left as
    they arrive (a GPU scales them); "torch": scaled here as a GPU does (torch ops)."""
    from landseg.data.datamodule import CsvSegmentationDataModule
    from landseg.planning.prepare import prepare

    folder.mkdir(parents=True)
    config = dubai_config(folder, rows, rows[:1], batch_size=batch_size, workers=workers)
    config["data_source"]["cache"] = cache
    if augment:
        config["data_source"]["data_augmentation"] = {"train": list(augment)}
    Path(config["output_setup"]["output_folder"]).mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    prepared = prepare(path, [])
    module = CsvSegmentationDataModule(prepared.config, prepared.summary)
    module.compact_transport = compact
    module.loader = module.train_dataloader()
    module.scale_here = scale_here
    return module


def memory_kib(pid: int) -> dict[str, int]:
    """RssAnon and RssShmem of a process, in KiB (empty once it has ended)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssShmem"):
                found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def run_epoch(module: Any, epoch: int, probe_every: int = 0) -> tuple[float, dict[str, int]]:
    """(seconds, peak KiB of RssAnon/RssShmem of the main process and of any worker)."""
    module.train_sampler.set_epoch(epoch)
    peaks = {"main_anon": 0, "main_shmem": 0, "worker_anon": 0, "worker_shmem": 0}

    def probe(workers: list[int]) -> None:
        for who, pids in (("main", [os.getpid()]), ("worker", workers)):
            for pid in pids:
                seen = memory_kib(pid)
                peaks[f"{who}_anon"] = max(peaks[f"{who}_anon"], seen.get("RssAnon", 0))
                peaks[f"{who}_shmem"] = max(peaks[f"{who}_shmem"], seen.get("RssShmem", 0))

    start = time.perf_counter()
    iterator = iter(module.loader)
    workers = [w.pid for w in getattr(iterator, "_workers", [])]
    here = getattr(module, "scale_here", False)
    scale = module.scaler("train") if here else (lambda batch: batch)
    if here == "torch":  # the scaling a GPU runs, here on the CPU (what 9c measured)
        scaler = module.scaler("train")
        scale = lambda batch: {  # noqa: E731
            **batch,
            "image": scaler._scale(batch["image"]),
            "mask": batch["mask"].to(torch.int64),  # as BatchScaler does, whatever the device
        }
    for index, batch in enumerate(iterator):
        scale(batch)  # a compact batch (uint8 from the workers) is scaled here, as in training
        if probe_every and index % probe_every == 0:
            probe(workers)
    if probe_every:
        probe(workers)
    return time.perf_counter() - start, peaks


class Ready(Dataset):
    """The ceiling: one sample made once, handed out again (no decode, no cache, no scaling)."""

    def __init__(self, sample: dict[str, Any], length: int):
        self.sample, self.length = sample, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return {
            "image": self.sample["image"].clone(),
            "mask": self.sample["mask"].clone(),
            "index": key[0],
        }


def ceiling(module: Any) -> SimpleNamespace:
    """The same loader (sampler, batch, workers, persistent as landseg's) over :class:`Ready`:
    what the loader machinery allows on this machine, whatever the dataset does."""
    loader = module.loader
    # the sample as the loader's own dataset makes it (compact when the loader sends uint8)
    ready = Ready(loader.dataset[(0, 0)], len(module.train_dataset))
    return SimpleNamespace(
        train_sampler=module.train_sampler,
        loader=DataLoader(
            ready,
            batch_size=loader.batch_size,
            sampler=module.train_sampler,
            num_workers=loader.num_workers,
            persistent_workers=loader.persistent_workers,
            worker_init_fn=loader.worker_init_fn,
        ),
    )


def throughput(
    folder: Path, rows: list[Row], workers: int, epochs: int, batch_size: int
) -> dict[str, Any]:
    """Tiles/s of the filling epoch and (median) of the later ones, for each configuration.

    The configurations take turns epoch by epoch, so a change of the machine's load hits
    them alike.
    """
    setups: list[tuple[str, str, Sequence[str], bool, bool | str]] = [
        ("none", "none", (), False, True),
        ("disk", "disk", (), False, True),
        ("memory", "memory", (), False, True),
        ("none+augment", "none", AUGMENTATIONS, False, True),
        ("disk+augment", "disk", AUGMENTATIONS, False, True),
    ]
    if workers:  # compact batches (only with workers): as a GPU gets them, and scaled here
        setups += [
            ("disk+compact (GPU)", "disk", (), True, False),
            ("disk+compact, scaled on the CPU", "disk", (), True, True),
            ("disk+compact, scaled on the CPU by torch", "disk", (), True, "torch"),
        ]
    modules = {
        name: build_module(
            folder / f"{name.replace(' ', '_')}-w{workers}",
            rows,
            cache=cache,
            workers=workers,
            batch_size=batch_size,
            augment=augment,
            compact=compact,
            scale_here=scale_here,
        )
        for name, cache, augment, compact, scale_here in setups
    }
    modules["ceiling"] = ceiling(modules["none"])
    first = {name: run_epoch(module, 0)[0] for name, module in modules.items()}
    later: dict[str, list[float]] = {name: [] for name in modules}
    for epoch in range(1, epochs):
        for name, module in modules.items():
            later[name].append(run_epoch(module, epoch)[0])
    rates = {
        name: {
            "first_epoch": round(len(rows) / first[name], 1),
            "later_epochs": round(len(rows) / median(later[name]), 1),
        }
        for name in modules
    }
    rate = {name: value["later_epochs"] for name, value in rates.items()}
    # the cached loader a CPU training run uses (landseg.data.transport), against no cache
    from landseg.data.transport import compact_for

    cpu_loader = "disk+compact, scaled on the CPU" if workers and compact_for(False) else "disk"
    cpu_ratio = round(rate[cpu_loader] / rate["none"], 2)
    print(
        f"workers={workers}: a CPU run's cached loader ({cpu_loader}) / uncached loader, "
        f"epochs 2-{epochs}: {cpu_ratio}x",
        flush=True,
    )
    return {
        "cpu_run_loader": cpu_loader,
        "cpu_run_loader_vs_none": cpu_ratio,
        "tiles_per_s": rates,
        "disk_vs_none": round(rate["disk"] / rate["none"], 2),
        "memory_vs_none": round(rate["memory"] / rate["none"], 2),
        "disk+augment_vs_none+augment": round(rate["disk+augment"] / rate["none+augment"], 2),
        "disk_share_of_ceiling": round(rate["disk"] / rate["ceiling"], 2),
        **{
            f"{name}_vs_none": round(rate[name] / rate["none"], 2)
            for name in rate
            if "compact" in name
        },
        "augment_ms_per_tile_on_disk": round(1000 / rate["disk+augment"] - 1000 / rate["disk"], 2),
        "load": load_average(),
    }


def distinct_rows(folder: Path, rows: list[Row], factor: int) -> list[Row]:
    """``factor`` copies of ``rows`` under their own names (symbolic links to the tiles)."""
    linked: list[Row] = []
    for copy in range(factor):
        for image, mask in rows:
            pair = []
            for source, kind in ((image, "img"), (mask, "msk")):
                link = folder / f"copy{copy}" / kind / source.name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(source)
                pair.append(link)
            linked.append((pair[0], pair[1]))
    return linked


def anonymous_memory(
    folder: Path, rows: list[Row], factors: list[int], workers: int, batch_size: int
) -> dict[str, Any]:
    """Peak RssAnon/RssShmem (MiB) of a filling and a reading epoch with the disk cache."""
    found: dict[str, Any] = {}
    for factor in factors:
        many = distinct_rows(folder / "links", rows, factor)
        module = build_module(
            folder / f"memory-x{factor}-w{workers}",
            many,
            cache="disk",
            workers=workers,
            batch_size=batch_size,
        )
        fill_s, fill = run_epoch(module, 0, probe_every=4)
        read_s, read = run_epoch(module, 1, probe_every=4)
        cache = module.train_dataset.cache.folder
        found[f"x{factor}"] = {
            "rows": len(many),
            "cache_mb": round(sum(p.stat().st_size for p in cache.rglob("*.tile")) / 1e6, 1),
            "fill_epoch": {k: round(v / 1024, 1) for k, v in fill.items()},
            "read_epoch": {k: round(v / 1024, 1) for k, v in read.items()},
            "tiles_per_s": {
                "fill": round(len(many) / fill_s, 1),
                "read": round(len(many) / read_s, 1),
            },
        }
    return found


def per_tile_ms(folder: Path, rows: list[Row], repeats: int = 3) -> dict[str, float]:
    """Milliseconds per tile, in this process: decode, disk hit, memory hit (median of passes)."""
    module = build_module(folder / "per-tile", rows, cache="disk", workers=0, batch_size=8)
    dataset = module.train_dataset
    disk = dataset.cache
    from landseg.data.cache import MemoryCache, memory_row_layout

    memory = MemoryCache(len(dataset), *memory_row_layout(module.summary))
    timings: dict[str, list[float]] = {"decode": [], "disk hit": [], "memory hit": []}
    for cache in (disk, memory):  # fill
        for index, pair in enumerate(dataset.pairs):
            cache.fetch(index, pair, lambda pair=pair: dataset.decode(pair))
    for _ in range(repeats):
        for name, read in (
            ("decode", lambda i, p: dataset.decode(p)),
            ("disk hit", lambda i, p: disk.fetch(i, p, None)),
            ("memory hit", lambda i, p: memory.fetch(i, p, None)),
        ):
            start = time.perf_counter()
            for index, pair in enumerate(dataset.pairs):
                read(index, pair)
            timings[name].append((time.perf_counter() - start) / len(rows) * 1000)
    return {name: round(median(values), 3) for name, values in timings.items()}


def training_epochs(folder: Path, rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    """Seconds an epoch of ``landseg train`` on the CPU (the bench's lightunet, batch
    ``--batch-size``, 2 workers, disk cache, logging off) with compact batches on and off
    (``COMPACT_ON_CPU``), runs alternated; the median of every epoch after the first (which
    fills the cache) of every run of each side, in-process clock."""
    from unittest import mock

    from benchmarks.common import EpochClock
    from landseg.planning.prepare import prepare
    from landseg.training.run import train

    val = rows[: max(1, len(rows) // 2)]
    epochs: dict[str, list[float]] = {"compact": [], "plain": []}
    for round_ in range(args.train_rounds):
        for side in ("compact", "plain") if round_ % 2 == 0 else ("plain", "compact"):
            where = folder / f"train-{side}-{round_}"
            where.mkdir(parents=True)
            config = dubai_config(
                where,
                rows,
                val,
                epochs=args.train_epochs,
                batch_size=args.batch_size,
                workers=2,
                logging=False,
            )
            config["data_source"]["cache"] = "disk"
            path = where / "config.json"
            path.write_text(json.dumps(config))
            prepared = prepare(path, [])
            clock = EpochClock()
            with mock.patch("landseg.data.transport.COMPACT_ON_CPU", side == "compact"):
                train(prepared.config, prepared.summary, extra_callbacks=[clock])
            epochs[side] += [wall for wall, _ in clock.clock.intervals(skip=1)]
    seconds = {side: round(median(values), 3) for side, values in epochs.items()}
    print(
        f"landseg train on the CPU, s/epoch after the first: compact {seconds['compact']}, "
        f"plain {seconds['plain']}, plain / compact {seconds['plain'] / seconds['compact']:.3f}",
        flush=True,
    )
    return {
        "train_tiles": len(rows),
        "val_tiles": len(val),
        "epochs": epochs,
        "median_s_per_epoch": seconds,
        "plain_over_compact": round(seconds["plain"] / seconds["compact"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=256, help="Dubai train tiles")
    parser.add_argument("--epochs", type=int, default=4, help="the first fills, the rest timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--factors", type=int, nargs="+", default=[1, 10], help="distinct rows, x --tiles"
    )
    parser.add_argument(
        "--memory-tiles", type=int, default=256, help="Dubai tiles of the memory measurement"
    )
    parser.add_argument(
        "--memory-workers", type=int, default=2, help="workers of the memory measurement"
    )
    parser.add_argument(
        "--train-tiles",
        type=int,
        default=0,
        help="also time landseg train on this many tiles, compact batches on and off (0: no)",
    )
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--train-rounds", type=int, default=2, help="runs of each side")
    parser.add_argument(
        "--only-train", action="store_true", help="only the landseg train comparison"
    )
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    load_before = load_average()
    rows = dubai_rows("train", args.tiles)
    for image, mask in rows:  # every source file in the page cache
        read_pair(image, mask)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        folder = Path(tmp)
        result: dict[str, Any] = {
            "setup": {
                "tiles": len(rows),
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "augmentations": AUGMENTATIONS,
            }
        }
        if not args.only_train:
            result["per_tile_ms"] = per_tile_ms(folder, rows)
            result["throughput"] = {
                f"workers={workers}": throughput(
                    folder, rows, workers, args.epochs, args.batch_size
                )
                for workers in args.workers
            }
            result[f"disk_cache_memory_mib_workers={args.memory_workers}"] = anonymous_memory(
                folder,
                dubai_rows("train", args.memory_tiles),
                args.factors,
                args.memory_workers,
                args.batch_size,
            )
        if args.train_tiles:
            train_rows = dubai_rows("train", args.train_tiles)
            result["training_compact_vs_plain"] = training_epochs(folder, train_rows, args)
    report("cache", result, load_before)


if __name__ == "__main__":
    main()
