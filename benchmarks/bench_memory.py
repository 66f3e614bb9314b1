"""Peak memory of one epoch of landseg's train loader, for 1x and 10x the rows of the CSV.

The CSV of ``--tiles`` Dubai rows is repeated ``factor`` times (the same files, so only the
number of rows changes). Each measurement runs in a fresh interpreter: config and data checks
(every row's raster headers), the datamodule, then one epoch of the train loader. Peak RSS
comes from ``resource.getrusage``: the process itself (``RUSAGE_SELF``) and its largest
finished child (``RUSAGE_CHILDREN``: the DataLoader workers, and helper processes that
libraries fork while importing). It must not grow with the number of rows.

    python -m benchmarks.bench_memory --tiles 64 --factors 1 10 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    add_threads_argument,
    apply_threads,
    bytecode_env,
    dubai_config,
    dubai_rows,
    load_average,
    report,
)


def peak_mib(who: int) -> float:
    """Peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def child(config_path: Path) -> None:
    """One epoch of the train loader; prints peak RSS (MiB) before and after, as JSON."""
    from landseg.data.datamodule import CsvSegmentationDataModule
    from landseg.planning.prepare import prepare

    prepared = prepare(config_path, [])
    checked, summary = prepared.config, prepared.summary
    datamodule = CsvSegmentationDataModule(checked, summary)
    loader = datamodule.train_dataloader()
    before = peak_mib(resource.RUSAGE_SELF)
    start = time.perf_counter()
    tiles = sum(len(batch["index"]) for batch in loader)
    print(
        json.dumps(
            {
                "rows": summary.split_sizes["train"],
                "tiles_read": tiles,
                "epoch_s": round(time.perf_counter() - start, 1),
                "peak_rss_mib_before_epoch": before,
                "peak_rss_mib": peak_mib(resource.RUSAGE_SELF),
                "peak_rss_mib_children": peak_mib(resource.RUSAGE_CHILDREN),
            }
        )
    )


def measure(folder: Path, tiles: int, factor: int, workers: int) -> dict:
    rows = dubai_rows("train", tiles)
    here = folder / f"x{factor}-workers{workers}"
    config = dubai_config(here, rows * factor, rows[:1], workers=workers, logging=False)
    config["data_source"]["cache"] = "none"  # the reading path; the disk cache: bench_cache
    path = here / "config.json"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "benchmarks.bench_memory", "--child", str(path)]
    env = bytecode_env(folder / "pycache")
    done = subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=64, help="distinct Dubai tiles")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.child:
        child(args.child)
        return
    load_before = load_average()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for workers in args.workers:
            for factor in args.factors:
                results[f"workers={workers} rows x{factor}"] = measure(
                    Path(tmp), args.tiles, factor, workers
                )
    for workers in args.workers:
        small = results[f"workers={workers} rows x{min(args.factors)}"]
        large = results[f"workers={workers} rows x{max(args.factors)}"]
        results[f"workers={workers} growth_mib"] = {
            key: round(large[key] - small[key], 1)
            for key in ("peak_rss_mib", "peak_rss_mib_children")
        }
    report("memory", {"setup": {"distinct_tiles": args.tiles}, "results": results}, load_before)


if __name__ == "__main__":
    main()
