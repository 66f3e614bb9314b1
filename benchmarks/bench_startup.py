"""Where a ``landseg train`` process's fixed cost goes, against the hand-written loop's.

A whole process is its fixed cost (start, imports, checks, set-up, the end) plus its epochs.
This tells the fixed cost apart, for landseg and for :mod:`benchmarks.hand_loop`, in the
configurations of :mod:`benchmarks.bench_process` (float32, cache none, same workers):

* the interpreter's own start: ``python -c pass``, median of 3;
* imports: ``python -X importtime`` of the whole process (``landseg train -c`` of the config;
  the hand loop), the modules' own times summed per top-level package. importtime slows
  imports down a little; its total is a measure of imports alone, not of a normal run;
* landseg's phases, stamped from the outside by :mod:`benchmarks.startup_probe` (an import
  hook wraps landseg's functions; no edit of landseg): interpreter start, importing the CLI,
  the command's imports, the config checks (``prepare_train``), planning, building the task,
  the run files, building the trainer, the start of fit to the first training step (the
  TensorBoard model graph in it), the epochs, the end of fit (``on_fit_end`` drawings, the
  last checkpoint), after fit, and the exit (loader workers' shutdown, interpreter teardown);
* the hand loop's phases from its own stamps: interpreter and imports, network and loaders,
  to the first step, the epochs, the exit.

The fixed cost is the whole process less its epochs (first training step to the last
validation's end). Every process runs with bytecode cached, after an untimed warm pair.

    python -m benchmarks.bench_startup                       # base and images, 8/8 tiles, 1 epoch
    python -m benchmarks.bench_startup --configs base images defaults --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_process import (
    CONFIGS,
    base_config,
    child_env,
    hand_spec,
    landseg_config,
    run_process,
    write_run_config,
)
from benchmarks.host import host, load_average
from benchmarks.plain import dubai_rows, median

PROBE_OUT = "LANDSEG_PROBE_OUT"


def interpreter_s(env: dict[str, str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        done = run_process([sys.executable, "-c", "pass"], env, "python -c pass")
        times.append(done.end - done.start)
    return round(median(times), 3)


def parse_importtime(text: str, top: int = 15) -> dict[str, Any]:
    """``-X importtime`` lines -> seconds per top-level package (the modules' self times)."""
    by_package: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line.split(":", 1)[1].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        module = fields[2].strip()
        by_package[module.split(".")[0]] += int(fields[0]) / 1e6
    total = sum(by_package.values())
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    return {
        "total_s": round(total, 2),
        "by_package_s": {name: round(s, 3) for name, s in ranked[:top]},
        "others_s": round(sum(s for _, s in ranked[top:]), 3),
    }


def importtime(command: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    stderr = run_process([sys.executable, "-X", "importtime", *command], env, what).stderr
    return parse_importtime(stderr)


# ---------------------------------------------------------------------------- landseg


def _spans(records: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    return [r for r in records if r["label"] == label]


def _one(records: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    spans = _spans(records, label)
    return spans[0] if spans else None


def landseg_phases(launched: float, exited: float, stamps: dict[str, Any]) -> dict[str, Any]:
    """The probe's stamps as consecutive phases (seconds) and the details inside them."""
    records = stamps["records"]
    checks, fit = _one(records, "config checks (prepare_train)"), _one(records, "fit")
    step = _one(records, "training step")
    # the end of a validation: its metrics computed (the module's epoch-end hook), before the
    # callbacks log, draw and checkpoint it, as the hand loop's validation ends with its mIoU
    done = _spans(records, "validation done")
    if checks is None or fit is None or step is None or not done:
        raise SystemExit(f"the probe saw no complete run; not seen: {stamps.get('not_seen')}")
    last_val = done[-1]["end"]
    marks = [
        ("interpreter start", launched, stamps["started"]),
        ("import landseg.cli.main", stamps["started"], stamps["imported_cli"]),
        ("the command's imports, to the config checks", stamps["imported_cli"], checks["start"]),
        ("config checks (prepare_train)", checks["start"], checks["end"]),
        ("planning, task, run files, trainer (to fit)", checks["end"], fit["start"]),
        ("fit start to the first training step", fit["start"], step["start"]),
        ("epochs: first step to the last validation's metrics", step["start"], last_val),
        ("end of fit: last validation's metrics to fit's return", last_val, fit["end"]),
        ("after fit, to the command's return", fit["end"], stamps["main_returned"]),
        ("exit: workers' shutdown, interpreter teardown", stamps["main_returned"], exited),
    ]
    phases = {name: round(b - a, 3) for name, a, b in marks}

    def total(label: str, start: float = 0.0, end: float = float("inf")) -> float:
        spans = [r for r in _spans(records, label) if start <= r["start"] < end]
        return round(sum(r["end"] - r["start"] for r in spans), 3)

    details = {
        "planning (plan_run)": total("run plan (plan_run)"),
        "building the task (network's weights initialised)": total("building the task"),
        "run.json and config copy": total("run.json and config copy"),
        "building the trainer (loggers, callbacks)": total("building the trainer"),
        "model graph (TensorBoard), in fit start": total("model graph (TensorBoard)"),
        "drawings in the epochs (figures, grids, histograms)": total(
            "drawing (any epoch)", step["start"], last_val
        ),
        "drawings at the end of fit": total("drawing (any epoch)", last_val),
        "on_fit_end of the run logger (learning curves, final figures)": total(
            "on_fit_end (run logger)"
        ),
        "checkpoint saves in the epochs": total("checkpoint save", step["start"], last_val),
        "checkpoint saves at the end of fit": total("checkpoint save", last_val),
        "after fit (test, predict, export)": total("after fit (test, predict, export)"),
    }
    whole = exited - launched
    epochs = phases["epochs: first step to the last validation's metrics"]
    return {
        "whole_s": round(whole, 2),
        "fixed_s": round(whole - epochs, 2),
        "phases_s": phases,
        "details_s": details,
        "not_seen": stamps.get("not_seen", []),
        "note": "a phase includes the imports made in it (landseg imports smp, Lightning's "
        "loggers and matplotlib lazily): see imports for their cost by package",
    }


def probe_landseg(folder: Path, config: dict[str, Any], name: str, env: dict[str, str]) -> dict:
    path = write_run_config(folder, config, name)
    out = path.parent / "stamps.json"
    command = [sys.executable, "-m", "benchmarks.startup_probe", "train", "-c", str(path)]
    done = run_process(command, {**env, PROBE_OUT: str(out)}, f"landseg {name}")
    return landseg_phases(done.start, done.end, json.loads(out.read_text()))


# ---------------------------------------------------------------------------- the hand loop


def hand_phases(folder: Path, spec: dict[str, Any], name: str, env: dict[str, str]) -> dict:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "benchmarks.hand_loop", "--spec", str(path)]
    done = run_process(command, env, f"hand loop {name}")
    start, end = done.start, done.end
    s = json.loads(done.stdout.strip().splitlines()[-1])
    last_val = s["val_ends"][-1]
    phases = {
        "interpreter start and imports": round(s["imported"] - start, 3),
        "network and loaders": round(s["built"] - s["imported"], 3),
        "to the first training step (workers start)": round(s["first_step"] - s["built"], 3),
        "epochs: first step to the last validation": round(last_val - s["first_step"], 3),
        "workers' shutdown": round(s["workers_ended"] - last_val, 3),
        "exit: interpreter teardown": round(end - s["workers_ended"], 3),
    }
    whole = end - start
    return {
        "whole_s": round(whole, 2),
        "fixed_s": round(whole - (last_val - s["first_step"]), 2),
        "phases_s": phases,
    }


def _medians(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every number across runs, keeping the structure of the first record."""
    first = records[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = _medians([r[key] for r in records])
        elif isinstance(value, int | float):
            out[key] = round(median([r[key] for r in records]), 3)
        else:
            out[key] = value
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=["base", "images"],
        help="bench_process configurations to break down (default: base images)",
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every process")
    parser.add_argument("--runs", type=int, default=1, help="probed runs per side (medians)")
    parser.add_argument("--hand-foreach", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = list(dict.fromkeys(args.configs))
    machine = {**host(), "torch": torch.__version__}
    train_rows, val_rows = dubai_rows("train", args.train), dubai_rows("val", args.val)
    result: dict[str, Any] = {
        "benchmark": "startup",
        "command": [sys.executable, "-m", "benchmarks.bench_startup", *sys.argv[1:]],
        "host": machine,
        "load_before": machine["load_1_5_15"],
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        env = child_env(folder, args.threads)
        base = base_config(folder, train_rows, val_rows, args)
        plain = hand_spec(train_rows, val_rows, args, "plain")
        # an untimed pair compiles and caches the bytecode of both sides
        probe_landseg(folder, landseg_config(base, configs[0]), "warm-landseg", env)
        hand_phases(folder, plain, "warm-hand", env)
        result["interpreter_start_s"] = interpreter_s(env)
        spec_path = folder / "hand-importtime.json"
        spec_path.write_text(json.dumps(plain))
        hand_command = ["-m", "benchmarks.hand_loop", "--spec", str(spec_path)]
        result["imports"] = {"hand": importtime(hand_command, env, "hand loop under importtime")}
        result["landseg"] = {}
        for name in configs:
            config = landseg_config(base, name)
            here = folder / f"importtime-{name}"
            here.mkdir()
            config["output_setup"]["output_folder"] = str(here / "runs")
            (here / "config.json").write_text(json.dumps(config))
            result["imports"][f"landseg {name}"] = importtime(
                ["-m", "landseg.cli.main", "train", "-c", str(here / "config.json")],
                env,
                f"landseg {name} under importtime",
            )
        hand_runs, landseg_runs = [], defaultdict(list)
        for run in range(args.runs):
            hand_runs.append(hand_phases(folder, plain, f"hand-{run}", env))
            for name in configs:
                landseg_runs[name].append(
                    probe_landseg(folder, landseg_config(base, name), f"{name}-{run}", env)
                )
            print(f"run {run}: load {load_average()}", file=sys.stderr, flush=True)
    result["hand"] = _medians(hand_runs)
    for name in configs:
        phases = _medians(landseg_runs[name])
        phases["fixed_minus_hand_s"] = round(phases["fixed_s"] - result["hand"]["fixed_s"], 2)
        result["landseg"][name] = phases
    result["load_after"] = load_average()
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    os.environ.pop(PROBE_OUT, None)
    sys.exit(main())
