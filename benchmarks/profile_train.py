"""Where ``landseg train``'s time goes: cProfile over one in-process run on the Dubai tiles.

Prints the seconds (cumulative, over the whole run) of the parts that matter for the overhead
against a hand-written loop: the forward and backward passes (``conv2d``, ``run_backward``, to
compare with the hand loop's), the checkpoints and their fsyncs, the drawings, the loggers,
the data pipeline, the metrics. cProfile slows Python-heavy code down a little; torch's
kernels are C and unaffected.

    python -m benchmarks.profile_train --model resnet18 --train 96 --val 48 --epochs 3
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path

from benchmarks.common import dubai_config, dubai_rows

#: (label, regular expression on pstats' "file:line(function)"), reported in this order.
PARTS = (
    ("fit (Lightning's loops)", r"trainer\.py:\d+\(_run_stage\)"),
    ("training steps", r"automatic\.py:\d+\(run\)"),
    ("validation loops", r"evaluation_loop\.py:\d+\(run\)"),
    ("conv2d (forward)", r"\{built-in method torch\.conv2d\}"),
    ("run_backward", r"\{method 'run_backward'"),
    ("checkpoints (all)", r"model_checkpoint\.py:\d+\(_save_checkpoint\)"),
    ("fsync", r"\{built-in method posix\.fsync\}"),
    ("drawn figures (run logger)", r"run_logger\.py:\d+\(_draw_evaluation\)"),
    ("weight histograms", r"weights\.py:\d+\(draw_final\)"),
    ("model graph", r"weights\.py:\d+\(on_fit_start\)"),
    ("image grids", r"images\.py:\d+\(draw_final\)"),
    ("dataset __getitem__", r"dataset\.py:\d+\(__getitem__\)"),
    ("metrics update", r"metrics\.py:\d+\(update\)"),
    ("losses", r"losses\.py:\d+\(forward\)"),
    ("task set-up (model built)", r"segmentation\.py:\d+\(__init__\)"),
)


def cumulative(stats: pstats.Stats, pattern: str) -> float:
    """Cumulative seconds of the functions matching ``pattern`` (summed over them)."""
    import re

    regex = re.compile(pattern)
    total = 0.0
    for (file, line, name), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if regex.search(f"{file}:{line}({name})"):
            total += cum
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--top", type=int, default=0, help="also print pstats' top N lines")
    args = parser.parse_args()

    from landseg.planning.prepare import prepare
    from landseg.training.run import train

    with tempfile.TemporaryDirectory(prefix="profile-train-") as tmp:
        folder = Path(tmp)
        config = dubai_config(
            folder,
            dubai_rows("train", args.train),
            dubai_rows("val", args.val),
            model=args.model,
            epochs=args.epochs,
            workers=args.workers,
        )
        config["device_setup"]["precision"] = args.precision
        path = folder / "config.json"
        path.write_text(json.dumps(config))
        prepared = prepare(path, [])
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        train(prepared.config, prepared.summary)
        profile.disable()
        wall = time.perf_counter() - start
    stats = pstats.Stats(profile, stream=io.StringIO())
    print(f"train(): {wall:.2f} s wall for {args.epochs} epochs ({vars(args)})")
    for label, pattern in PARTS:
        seconds = cumulative(stats, pattern)
        print(f"  {label:<28} {seconds:7.2f} s  ({seconds / args.epochs:.2f} s per epoch)")
    if args.top:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
