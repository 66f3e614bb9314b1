"""Whole processes, like for like: ``landseg train -c`` against the hand-written loop.

Issue 27's rules. Both sides read every tile with rasterio on every epoch (landseg's
``data_source.cache: none``; the hand loop has no cache), compute in float32 (landseg's
``device_setup.precision: 32-true``, channels-last off), use the same loader workers
(persistent, as landseg's) and the same torch threads (``--threads`` sets OMP_NUM_THREADS for
both, else torch's default in both). The hand loop (:mod:`benchmarks.hand_loop`) imports
nothing of landseg or Lightning.

The headline of every configuration is the **whole process**, launch to exit, as a user's
clock sees it: the ratio landseg / hand of the medians over ``--runs``. Epoch times come from
in-process stamps (landseg: the last ``val`` row of each epoch in ``logs/scalars.jsonl``; the
hand loop: its own) and are named per-epoch. The processes run alternated, one round after
another, with bytecode cached (``bytecode_env``) and a first untimed pair to warm the bytecode
and page caches; in odd rounds the landseg runs come before the hand run they share.

Configurations (``--configs``), each a landseg config and the hand-loop variant it is
compared with (a hand variant runs once a round, shared by the configs that use it):

* ``base``: TensorBoard, history and top-k checkpoints off (the run's own files, its ``last``
  checkpoint and its final figures stay: landseg always writes them); hand ``plain``.
* ``aug``: ``data_augmentation.train: [rotation90, radiometry]``; hand ``aug`` (the same ops).
* ``images``: TensorBoard on, with its image grids and weight histograms every epoch
  (``figures_every_n_epochs: 1``) and the model graph; hand ``plain``.
* ``topk``: ``save_top_k: 3`` on both monitors (val_loss, val_miou): with 3 epochs every epoch
  writes both; hand ``plain``.
* ``valhalf``: ``val_check_interval: 0.5``; hand ``val2`` (validates twice an epoch).
* ``defaults``: landseg with its defaults for precision (``auto``), channels-last, the cache
  (``disk``, a new cache folder per run, as a first run has) and the outputs (TensorBoard,
  history, ``save_top_k: 3``, figures ``auto``); same data, network, epochs, batch and 2
  workers, progress bar off; against the float32 hand loop ``plain``. Its target is a ratio of
  at most 0.5 (goal 0.4), and it counts only on a host with native bf16 (``avx512_bf16`` or
  ``amx_bf16``): elsewhere ``auto`` is float32 and the figure is reported as not counting.

Every config but ``defaults`` must keep its ratio at most ``--limit`` (1.03): the benchmark
prints its JSON, then exits 1 with a message naming each config above it (and ``defaults``
when it counts and misses 0.5).

    python -m benchmarks.bench_process                       # every config, 3 runs each
    python -m benchmarks.bench_process --configs base aug --runs 5
    python -m benchmarks.bench_process --train 8 --val 8 --epochs 1 --runs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import dubai_config
from benchmarks.host import host, load_average
from benchmarks.plain import (
    DUBAI_CLASSES,
    REPO,
    Row,
    bytecode_env,
    dubai_rows,
    median,
)

AUGMENT = ["rotation90", "radiometry"]
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DEFAULTS_TARGET, DEFAULTS_GOAL = 0.5, 0.4

#: The hand loop's variants: spec fields over the plain float32 loop.
HAND_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "aug": {"augment": AUGMENT},
    "val2": {"val_per_epoch": 2},
}


def _augmented(config: dict[str, Any]) -> None:
    config["data_source"]["data_augmentation"] = {"train": list(AUGMENT)}


def _images(config: dict[str, Any]) -> None:
    config["output_setup"].update(use_tensorboard=True, figures_every_n_epochs=1)


def _topk(config: dict[str, Any]) -> None:
    config["output_setup"]["save_top_k"] = 3


def _valhalf(config: dict[str, Any]) -> None:
    config["train_setup"]["val_check_interval"] = 0.5


def _defaults(config: dict[str, Any]) -> None:
    """Every speed and output default of landseg's (the data, network, sizes and workers
    stay the comparison's; the progress bar stays off: it only prints)."""
    config["device_setup"].pop("precision", None)
    config["device_setup"].pop("channels_last", None)
    config["data_source"].pop("cache", None)
    for key in ("use_tensorboard", "save_history", "log_learning_rate", "save_top_k"):
        config["output_setup"].pop(key, None)


#: config name -> (what changes in landseg's base config, the hand variant it is compared with)
CONFIGS: dict[str, tuple[Callable[[dict[str, Any]], None] | None, str]] = {
    "base": (None, "plain"),
    "aug": (_augmented, "aug"),
    "images": (_images, "plain"),
    "topk": (_topk, "plain"),
    "valhalf": (_valhalf, "val2"),
    "defaults": (_defaults, "plain"),
}


def base_config(
    folder: Path, train: list[Row], val: list[Row], args: argparse.Namespace
) -> dict[str, Any]:
    """landseg's side of ``base``: the benchmarks' Dubai config without its logging, float32,
    no cache, the hand loop's sizes and workers."""
    config = dubai_config(
        folder,
        train,
        val,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        logging=False,
    )
    config["data_source"]["cache"] = "none"
    config["device_setup"].update(precision="32-true", channels_last=False)
    return config


def landseg_config(base: dict[str, Any], name: str) -> dict[str, Any]:
    config = json.loads(json.dumps(base))
    change = CONFIGS[name][0]
    if change is not None:
        change(config)
    return config


def hand_spec(train: list[Row], val: list[Row], args: argparse.Namespace, variant: str) -> dict:
    return {
        "model": args.model,
        "in_channels": 3,
        "classes": len(DUBAI_CLASSES),
        "train": [[str(a), str(b)] for a, b in train],
        "val": [[str(a), str(b)] for a, b in val],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "epochs": args.epochs,
        "lr": 0.001,
        "seed": 0,
        "fused": not args.hand_foreach,
        **HAND_VARIANTS[variant],
    }


# ---------------------------------------------------------------------------- the processes


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children and their reaped
    descendants (the loader workers): less moved by a busy machine than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Finished:
    """A child process that exited 0: its launch and exit (time.time()), CPU and output."""

    start: float
    end: float
    cpu_s: float
    stdout: str
    stderr: str


def run_process(command: list[str], env: dict[str, str], what: str) -> Finished:
    """Launch ``command`` from the repository root and wait; exit naming ``what`` if it fails."""
    cpu_before = _children_cpu()
    start = time.time()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    end = time.time()
    cpu = _children_cpu() - cpu_before
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-30:])
        raise SystemExit(f"{what} failed (exit {done.returncode}):\n{tail}")
    return Finished(start, end, cpu, done.stdout, done.stderr)


def write_run_config(folder: Path, config: dict[str, Any], name: str) -> Path:
    """``config`` written to ``folder/name/config.json``, its runs under ``folder/name/runs``."""
    here = folder / name
    here.mkdir(parents=True)
    config = json.loads(json.dumps(config))
    config["output_setup"]["output_folder"] = str(here / "runs")
    path = here / "config.json"
    path.write_text(json.dumps(config))
    return path


def run_landseg(folder: Path, config: dict[str, Any], name: str, env: dict[str, str]) -> dict:
    path = write_run_config(folder, config, name)
    here = path.parent
    command = [sys.executable, "-m", "landseg.cli.main", "train", "-c", str(path)]
    done = run_process(command, env, f"landseg {name}")
    scalars = next((here / "runs").rglob("logs/scalars.jsonl"))
    rows = [json.loads(line) for line in scalars.read_text().splitlines() if line.strip()]
    val = [row for row in rows if row.get("phase") == "val"]
    by_epoch: dict[int, float] = {}
    for row in val:  # with val_check_interval < 1 an epoch has several val rows: its last
        by_epoch[row["epoch"]] = max(by_epoch.get(row["epoch"], 0.0), row["time"])
    run_json = next((here / "runs").rglob("run.json"))
    state = json.loads(run_json.read_text())
    return {
        "start": done.start,
        "end": done.end,
        "cpu_s": done.cpu_s,
        "val_ends": [row["time"] for row in val],
        "epoch_ends": [by_epoch[e] for e in sorted(by_epoch)],
        "precision": state.get("precision"),
        "channels_last": state.get("channels_last"),
    }


def run_hand(folder: Path, spec: dict[str, Any], name: str, env: dict[str, str]) -> dict:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "benchmarks.hand_loop", "--spec", str(path)]
    done = run_process(command, env, f"hand loop {name}")
    stamps = json.loads(done.stdout.strip().splitlines()[-1])
    # the process's launch and exit, as the parent saw them: not the loop's own first and
    # last stamps, which leave out the interpreter's start and exit
    return {**stamps, "start": done.start, "end": done.end, "cpu_s": done.cpu_s}


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def split_times(record: dict[str, Any]) -> dict[str, Any]:
    """Whole process (launch to exit); per epoch from in-process stamps: each epoch after the
    first (end to end), their median (the steady epoch), and the rest of the process."""
    ends = record["epoch_ends"]
    epochs = [b - a for a, b in itertools.pairwise(ends)]
    steady = median(epochs) if epochs else float("nan")
    whole = record["end"] - record["start"]
    times: dict[str, Any] = {
        "whole_s": round(whole, 2),
        "cpu_s": round(record["cpu_s"], 2),
        "steady_epoch_s": _round(steady),
        "fixed_s": _round(whole - steady * len(ends)),
        "first_epoch_end_s": round(ends[0] - record["start"], 2) if ends else None,
        "last_epoch_end_to_exit_s": round(record["end"] - ends[-1], 2) if ends else None,
        "epochs_s": [round(e, 2) for e in epochs],
    }
    for key in ("precision", "channels_last", "val_miou"):
        if key in record:
            times[key] = record[key]
    return times


def _ratio(landseg: list[float | None], hand: list[float | None]) -> float | None:
    numerator = median([v for v in landseg if v is not None])
    denominator = median([v for v in hand if v is not None])
    if math.isnan(numerator) or math.isnan(denominator) or not denominator:
        return None
    return round(numerator / denominator, 4)


def summarise(
    configs: list[str], landseg: dict[str, list[dict]], hand: dict[str, list[dict]], limit: float
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in configs:
        variant = CONFIGS[name][1]
        mine, theirs = landseg[name], hand[variant]
        whole_l, whole_h = [r["whole_s"] for r in mine], [r["whole_s"] for r in theirs]
        ratio = _ratio(whole_l, whole_h)
        out[name] = {
            "hand_variant": variant,
            "whole_process_s": {"landseg": median(whole_l), "hand": median(whole_h)},
            "ratio": ratio,
            "difference_s": round(median(whole_l) - median(whole_h), 2),
            "process_cpu": {
                "landseg_s": median([r["cpu_s"] for r in mine]),
                "hand_s": median([r["cpu_s"] for r in theirs]),
                "ratio": _ratio([r["cpu_s"] for r in mine], [r["cpu_s"] for r in theirs]),
            },
            "per_epoch_in_process": {
                "steady_epoch_s": {
                    "landseg": _round(median([r["steady_epoch_s"] or math.nan for r in mine])),
                    "hand": _round(median([r["steady_epoch_s"] or math.nan for r in theirs])),
                },
                "ratio": _ratio(
                    [r["steady_epoch_s"] for r in mine], [r["steady_epoch_s"] for r in theirs]
                ),
            },
        }
        if name != "defaults":
            out[name]["limit"] = limit
            out[name]["within_limit"] = ratio is not None and ratio <= limit
    return out


def defaults_verdict(summary: dict[str, Any], flags: list[str], landseg_runs: list[dict]) -> dict:
    native = any(flag in flags for flag in NATIVE_BF16_FLAGS)
    ratio = summary.get("ratio")
    verdict = {
        "ratio": ratio,
        "target": DEFAULTS_TARGET,
        "goal": DEFAULTS_GOAL,
        "native_bf16": native,
        "counts": native,
        "precision_chosen": sorted({str(r.get("precision")) for r in landseg_runs}),
        "met": native and ratio is not None and ratio <= DEFAULTS_TARGET,
    }
    if not native:
        verdict["note"] = (
            "this host has no native bf16 (avx512_bf16 or amx_bf16): precision auto is "
            "float32 here, so this figure does not count for the defaults target"
        )
    return verdict


# ---------------------------------------------------------------------------- main


def schedule(configs: list[str], round_index: int) -> list[tuple[str, str]]:
    """One round: each hand variant in use with the landseg configs compared with it, the
    hand run first in even rounds and last in odd ones (a drift of load hits both alike)."""
    jobs: list[tuple[str, str]] = []
    for variant in dict.fromkeys(CONFIGS[name][1] for name in configs):
        group = [("hand", variant)] + [("landseg", n) for n in configs if CONFIGS[n][1] == variant]
        jobs += group if round_index % 2 == 0 else group[1:] + group[:1]
    return jobs


def child_env(folder: Path, threads: int | None) -> dict[str, str]:
    """The environment of both sides' processes: bytecode cached under ``folder``, and
    ``threads`` OpenMP/MKL threads when given (else torch's own)."""
    env = bytecode_env(folder / "pycache")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=list(CONFIGS),
        help="configurations to measure (default: all)",
    )
    parser.add_argument("--model", default="resnet18", help="resnet18..resnet152")
    parser.add_argument("--train", type=int, default=96, help="Dubai train tiles")
    parser.add_argument("--val", type=int, default=48, help="Dubai val tiles")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="loader workers, both sides")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS of both sides (default: torch's own)"
    )
    parser.add_argument("--runs", type=int, default=3, help="alternated rounds (medians)")
    parser.add_argument(
        "--limit", type=float, default=1.03, help="largest landseg/hand whole-process ratio"
    )
    parser.add_argument(
        "--hand-foreach",
        action="store_true",
        help="the hand loop's Adam with torch's default foreach step instead of the fused "
        "one landseg's default optimiser takes",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = list(dict.fromkeys(args.configs))
    command = [sys.executable, "-m", "benchmarks.bench_process", *sys.argv[1:]]
    machine = {**host(), "torch": torch.__version__}
    train_rows, val_rows = dubai_rows("train", args.train), dubai_rows("val", args.val)
    landseg: dict[str, list[dict]] = {name: [] for name in configs}
    hand: dict[str, list[dict]] = {CONFIGS[name][1]: [] for name in configs}
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        folder = Path(tmp)
        env = child_env(folder, args.threads)
        base = base_config(folder, train_rows, val_rows, args)
        # a first pair warms the bytecode cache and the page cache; not counted
        run_landseg(folder, {**base, "train_setup": {**base["train_setup"], "epochs": 1}},
                    "warm-landseg", env)  # fmt: skip
        run_hand(folder, {**hand_spec(train_rows, val_rows, args, "plain"), "epochs": 1},
                 "warm-hand", env)  # fmt: skip
        for round_index in range(args.runs):
            for kind, name in schedule(configs, round_index):
                label = f"r{round_index}-{kind}-{name}"
                if kind == "hand":
                    spec = hand_spec(train_rows, val_rows, args, name)
                    record = split_times(run_hand(folder, spec, label, env))
                    hand[name].append(record)
                else:
                    config = landseg_config(base, name)
                    record = split_times(run_landseg(folder, config, label, env))
                    landseg[name].append(record)
                raw.append({"run": label, **record})
                print(f"{label}: {record['whole_s']} s (load {load_average()})",
                      file=sys.stderr, flush=True)  # fmt: skip
    summary = summarise(configs, landseg, hand, args.limit)
    result: dict[str, Any] = {
        "benchmark": "process",
        "command": command,
        "host": machine,
        "load_before": machine["load_1_5_15"],
        "load_after": load_average(),
        "setup": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cache": "none (defaults: landseg's default)",
            "precision": "float32 both sides (defaults: landseg's auto)",
            "hand_adam": "foreach" if args.hand_foreach else "fused",
        },
        "headline": "whole process, launch to exit: ratio landseg / hand of the medians",
        "configs": {name: summary[name] for name in configs if name != "defaults"},
        "runs": raw,
    }
    if "defaults" in configs:
        result["defaults"] = {
            **summary["defaults"],
            **defaults_verdict(summary["defaults"], machine["cpu_flags"], landseg["defaults"]),
        }
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    failures = [
        f"{name}: {summary[name]['ratio']} > {args.limit}"
        for name in configs
        if name != "defaults" and not summary[name]["within_limit"]
    ]
    verdict = result.get("defaults")
    if verdict and verdict["counts"] and not verdict["met"]:
        failures.append(f"defaults: {verdict['ratio']} > {DEFAULTS_TARGET} (native bf16 host)")
    if failures:
        bar = "!" * 72
        print(
            f"{bar}\nFAILED: landseg / hand-written loop, whole process, above the limit:\n  "
            + "\n  ".join(failures)
            + f"\n{bar}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
