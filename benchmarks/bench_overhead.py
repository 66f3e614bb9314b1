"""``landseg train`` against a minimal hand-written PyTorch loop: seconds per epoch.

Same network (``--model``, lightunet by default, built by landseg's registry for both), same
Dubai tiles, batch size,
workers, epochs and optimiser. landseg runs with all its logging on (history, TensorBoard with
images, histograms and figures, top-k checkpoints, ``last``, run.json); the hand loop is Adam,
cross-entropy with ``ignore_index=-1`` and a validation pass with a bincount confusion matrix.

Epochs are timed from inside: a callback stamps each train-epoch start and the end of training
(so an epoch includes validation, checkpoints and every logger), the hand loop stamps the same
points. The first epoch of each run is left out (warm-up), runs alternate between the two, and
the figure is the median over runs of each run's median epoch; the whole run (every epoch
summed, the first included) is reported too, since drawn outputs (figures, grids, histograms)
are made on some epochs only (``figures_every_n_epochs``). Wall and process CPU time are both
reported (CPU time is less sensitive to other jobs on a shared machine).

    python -m benchmarks.bench_overhead --train 32 --val 8 --runs 3 --epochs 3

landseg runs with the defaults a user gets (``device_setup.precision: auto``, the decoded-tile
cache), unless ``--precision`` says otherwise; ``--hand-fast`` adds the hand loop with bf16
autocast and channels-last written by hand (issue 14's three-way comparison):

    python -m benchmarks.bench_overhead --model resnet18 --train 96 --val 48 --epochs 3 \
        --runs 1 --hand-fast --profile-epochs 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler

from benchmarks.common import (
    DUBAI_CLASSES,
    Clock,
    EpochClock,
    add_threads_argument,
    apply_threads,
    bare_loader,
    dubai_config,
    dubai_rows,
    hand_fit,
    load_average,
    median,
    report,
)


def landseg_epochs(
    folder: Path, config: dict[str, Any], version: str, profiler: SimpleProfiler | None = None
) -> list[tuple[float, float]]:
    """Train with landseg (what ``landseg train -c`` runs); (wall, cpu) of every epoch."""
    from landseg.planning.prepare import prepare
    from landseg.training.run import train

    path = folder / f"{version}.json"
    path.write_text(json.dumps(config))
    prepared = prepare(path, [f"output_setup.version_name={version}"])
    checked, summary = prepared.config, prepared.summary
    clock = EpochClock()
    trainer = partial(pl.Trainer, profiler=profiler) if profiler else pl.Trainer
    with mock.patch.object(pl, "Trainer", trainer):
        train(checked, summary, extra_callbacks=[clock])
    return clock.clock.intervals(skip=0)


def hand_epochs(
    args: argparse.Namespace,
    train_rows: list,
    val_rows: list,
    fast: bool = False,
    fused: bool = False,
) -> list:
    """The same training by the hand-written loop; (wall, cpu) of every epoch. ``fast``: with
    bf16 autocast and channels-last written by hand, as a user who knows the tricks would;
    ``fused``: with Adam's fused step too (landseg's default optimiser step)."""
    from landseg.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(args.model, 3, len(DUBAI_CLASSES), {})
    clock = Clock()
    hand_fit(
        model,
        bare_loader(train_rows, args.batch_size, args.workers, shuffle=True),
        bare_loader(val_rows, args.batch_size, args.workers, shuffle=False),
        epochs=args.epochs,
        n_classes=len(DUBAI_CLASSES),
        clock=clock,
        bf16=fast,
        channels_last=fast,
        fused=fused,
    )
    return clock.intervals(skip=0)


def profile_breakdown(profiler: SimpleProfiler, epochs: int, top: int = 14) -> dict[str, float]:
    """Seconds per epoch of the costliest Lightning actions and callback hooks."""
    totals: dict[str, float] = defaultdict(float)
    for action, durations in profiler.recorded_durations.items():
        totals[action] += sum(durations)
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return {action: round(total / epochs, 3) for action, total in ranked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=32, help="Dubai train tiles")
    parser.add_argument("--val", type=int, default=8, help="Dubai val tiles")
    parser.add_argument("--epochs", type=int, default=3, help="per run (the first is skipped)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--profile-epochs", type=int, default=2, help="an extra profiled landseg run (0: none)"
    )
    parser.add_argument("--model", default="lightunet", help="lightunet, resnet18, ...")
    parser.add_argument(
        "--precision",
        default="auto",
        help="landseg's device_setup.precision (auto: the default users get)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="landseg with train_setup.compile: true"
    )
    parser.add_argument(
        "--hand-fast",
        action="store_true",
        help="also time the hand loop with bf16 autocast and channels-last written by hand",
    )
    parser.add_argument(
        "--hand-fused",
        action="store_true",
        help="with --hand-fast: also that loop with Adam's fused step (fused=True) by hand",
    )
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    load_before = load_average()
    train_rows, val_rows = dubai_rows("train", args.train), dubai_rows("val", args.val)
    times: dict[str, list[list[tuple[float, float]]]] = {"landseg": [], "hand": []}
    if args.hand_fast:
        times["hand-fast"] = []
        if args.hand_fused:
            times["hand-fast-fused"] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        folder = Path(tmp)
        config = dubai_config(
            folder,
            train_rows,
            val_rows,
            epochs=args.epochs,
            batch_size=args.batch_size,
            workers=args.workers,
            model=args.model,
        )
        config["device_setup"]["precision"] = args.precision
        config["train_setup"]["compile"] = args.compile
        for run in range(args.runs):  # alternate, so a change of load hits both alike
            times["landseg"].append(landseg_epochs(folder, config, f"run{run}"))
            times["hand"].append(hand_epochs(args, train_rows, val_rows))
            if args.hand_fast:
                times["hand-fast"].append(hand_epochs(args, train_rows, val_rows, fast=True))
            if "hand-fast-fused" in times:
                times["hand-fast-fused"].append(
                    hand_epochs(args, train_rows, val_rows, fast=True, fused=True)
                )
            print(f"run {run}: load {load_average()}", flush=True)
        breakdown: dict[str, float] = {}
        if args.profile_epochs:
            profiler = SimpleProfiler(dirpath=folder, filename="profile")
            profiled = {**config, "train_setup": {**config["train_setup"]}}
            profiled["train_setup"]["epochs"] = args.profile_epochs
            landseg_epochs(folder, profiled, "profiled", profiler)
            breakdown = profile_breakdown(profiler, args.profile_epochs)

    result: dict[str, Any] = {
        "setup": {
            "train_tiles": args.train,
            "val_tiles": args.val,
            "tile": "256x256x3 uint8, 6 classes",
            **{
                k: getattr(args, k)
                for k in (
                    "model",
                    "precision",
                    "compile",
                    "epochs",
                    "runs",
                    "batch_size",
                    "workers",
                )
            },
        }
    }
    for kind in ("wall", "cpu"):
        index = 0 if kind == "wall" else 1
        # per epoch: each run's median steady epoch (the first left out), median over runs;
        # whole run: each run's every epoch summed (first epoch, drawings, graph included)
        # s_per_middle_epoch: the first and last epochs left out (the last one carries the
        # end-of-fit drawings, a fixed cost of the run); needs at least 3 epochs
        labels: list[tuple[str, int, int | None]] = [
            ("s_per_epoch", 1, None),
            ("s_whole_run", 0, None),
        ]
        if args.epochs >= 3:
            labels.append(("s_per_middle_epoch", 1, -1))
        for label, first, last in labels:
            per_run = {
                name: [
                    median([t[index] for t in run[first:last]])
                    if label != "s_whole_run"
                    else sum(t[index] for t in run)
                    for run in runs
                ]
                for name, runs in times.items()
            }
            landseg_s, hand_s = median(per_run["landseg"]), median(per_run["hand"])
            result[f"{kind}_{label}"] = {
                "landseg": round(landseg_s, 3),
                "hand": round(hand_s, 3),
                "ratio": round(landseg_s / hand_s, 4),
                "overhead_s": round(landseg_s - hand_s, 3),
                "per_run": {n: [round(v, 3) for v in values] for n, values in per_run.items()},
            }
            if args.hand_fast:
                fast_s = median(per_run["hand-fast"])
                result[f"{kind}_{label}"].update(
                    {
                        "hand_fast": round(fast_s, 3),
                        "ratio_to_hand_fast": round(landseg_s / fast_s, 4),
                        "speedup_over_hand_float32": round(hand_s / landseg_s, 3),
                        "hand_fast_speedup_over_hand_float32": round(hand_s / fast_s, 3),
                    }
                )
            if "hand-fast-fused" in per_run:
                fused_s = median(per_run["hand-fast-fused"])
                result[f"{kind}_{label}"].update(
                    {
                        "hand_fast_fused": round(fused_s, 3),
                        "ratio_to_hand_fast_fused": round(landseg_s / fused_s, 4),
                    }
                )
    result["epoch_s"] = {
        name: [[round(t[0], 2) for t in run] for run in runs] for name, runs in times.items()
    }
    result["landseg_profile_s_per_epoch"] = breakdown
    report("overhead", result, load_before)


if __name__ == "__main__":
    main()
