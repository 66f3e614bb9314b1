"""Is ``device_setup.precision: auto`` as accurate as float32? Validation mIoU, side by side.

The same U-Net ResNet-18 (``model_name: resnet18``) trained on the same Dubai tiles with the
same seeds, once with ``precision: auto`` (bf16 mixed precision and channels-last where the
hardware computes bf16 natively, which this script reports) and once with ``32-true``; the
validation mIoU of the last epoch and the best one, per seed, their differences, and the time
per epoch. Issue 14's target: the mean difference of the validation mIoU at most 1.0 point.

    python -m benchmarks.bench_precision --train 96 --val 48 --epochs 8 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_threads_argument,
    apply_threads,
    dubai_config,
    dubai_rows,
    load_average,
    machine,
)


def train_once(
    folder: Path, config: dict[str, Any], version: str
) -> tuple[list[float], float, dict[str, Any]]:
    """Train one run in this process; (val mIoU per epoch, seconds, run.json)."""
    from landseg.planning.prepare import prepare
    from landseg.training.run import train

    path = folder / f"{version}.json"
    path.write_text(json.dumps(config))
    prepared = prepare(path, [f"output_setup.version_name={version}"])
    start = time.perf_counter()
    run = train(prepared.config, prepared.summary)
    seconds = time.perf_counter() - start
    history = json.loads((run / "history.json").read_text())
    mious = [float(history[epoch]["Average/IoU"]) for epoch in sorted(history, key=int)]
    return mious, seconds, json.loads((run / "run.json").read_text())


#: Two-sided 97.5 % quantiles of Student's t by degrees of freedom (no scipy needed).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def paired_interval(differences: list[float]) -> tuple[float, float]:
    """The 95 % t interval of the mean of paired differences (same seed, two precisions).

    Pairing by seed removes what the seeds share (initial weights, tile order); what is left is
    how far two trainings that differ only in their rounding drift apart. With one seed the
    interval is unbounded.
    """
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return (float("-inf"), float("inf"))
    sd = (sum((d - mean) ** 2 for d in differences) / (n - 1)) ** 0.5
    t = T_975[max(k for k in T_975 if k <= n - 1)]
    half = t * sd / n**0.5
    return (round(mean - half, 3), round(mean + half, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=96, help="Dubai train tiles")
    parser.add_argument("--val", type=int, default=48, help="Dubai val tiles")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", nargs=2, default=["auto", "32-true"])
    parser.add_argument(
        "--scheduler",
        default=None,
        help="train_setup.scheduler_config.scheduler (default: landseg's); cosineannealinglr "
        "anneals to the last epoch, so the final mIoU is not a point on a noisy curve",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    load_before = load_average()
    train_rows, val_rows = dubai_rows("train", args.train), dubai_rows("val", args.val)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        folder = Path(tmp)
        for seed in args.seeds:
            for precision in args.precisions:  # side by side, alternating
                config = dubai_config(
                    folder,
                    train_rows,
                    val_rows,
                    model=args.model,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    logging=False,
                )
                config["output_setup"]["save_history"] = True
                config["train_setup"]["random_seed"] = seed
                if args.scheduler:
                    config["train_setup"]["scheduler_config"] = {"scheduler": args.scheduler}
                config["device_setup"]["precision"] = precision
                mious, seconds, state = train_once(folder, config, f"{precision}-{seed}")
                row = {
                    "seed": seed,
                    "precision": precision,
                    "resolved": state.get("precision"),
                    "channels_last": state.get("channels_last"),
                    "reason": state.get("fast_paths_reason"),
                    "last_miou": mious[-1],
                    "best_miou": max(mious),
                    "seconds_per_epoch": seconds / args.epochs,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    first, second = args.precisions
    lines = [
        f"| seed | {first} last / best val mIoU | {second} last / best | difference (last, "
        f"best, points) | s/epoch {first} / {second} |",
        "| --- | --- | --- | --- | --- |",
    ]
    last_diffs, best_diffs = [], []
    for seed in args.seeds:
        a = next(r for r in results if r["seed"] == seed and r["precision"] == first)
        b = next(r for r in results if r["seed"] == seed and r["precision"] == second)
        last_diffs.append(100 * (a["last_miou"] - b["last_miou"]))
        best_diffs.append(100 * (a["best_miou"] - b["best_miou"]))
        lines.append(
            f"| {seed} | {a['last_miou']:.4f} / {a['best_miou']:.4f} | {b['last_miou']:.4f} / "
            f"{b['best_miou']:.4f} | {last_diffs[-1]:+.2f}, {best_diffs[-1]:+.2f} | "
            f"{a['seconds_per_epoch']:.1f} / {b['seconds_per_epoch']:.1f} |"
        )
    mean_last = sum(last_diffs) / len(last_diffs)
    mean_best = sum(best_diffs) / len(best_diffs)
    lines.append(f"| mean | | | **{mean_last:+.2f}, {mean_best:+.2f}** | |")
    interval_last, interval_best = paired_interval(last_diffs), paired_interval(best_diffs)
    lines.append(
        f"95 % interval of the mean difference (t, {len(last_diffs)} paired seeds): last "
        f"[{interval_last[0]:+.2f}, {interval_last[1]:+.2f}], best "
        f"[{interval_best[0]:+.2f}, {interval_best[1]:+.2f}] points"
    )
    summary = {
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "first_resolved": results[0]["resolved"],
        "reason": results[0]["reason"],
        "mean_difference_points": {"last": mean_last, "best": mean_best},
        "interval_95_points": {"last": interval_last, "best": interval_best},
        "runs": results,
    }
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
