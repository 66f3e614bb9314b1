"""Whole processes: ``landseg train -c`` against a minimal hand-written loop, as a user runs them.

Issue 14's configuration: the U-Net ResNet-18 on 96 train / 48 val Dubai tiles, batch 8,
3 epochs, 2 loader workers, torch's default threads, all logging on, and the precision given
(``32-true`` for the float32 gap; ``auto`` for what a user gets). The two run as separate
interpreters, alternated, with bytecode cached (as an installed package has it). The hand loop
(:func:`benchmarks.common.hand_fit`: Adam, cross-entropy, a validation pass with a confusion
matrix; bf16 autocast and channels-last by hand with ``--precision`` other than 32-true) builds
the same network with landseg's registry.

Per process: the wall time from launch to exit, and the end time of each epoch's validation
(landseg: the ``val`` rows of ``logs/scalars.jsonl``; the hand loop: its own stamps, both on
the same clock), so a steady epoch (the median of the epochs after the first) and the fixed
cost (the rest: interpreter start, imports, checks, set-up, first-epoch warm-up, the end) are
told apart.

    python -m benchmarks.bench_process --precision 32-true --runs 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DUBAI_CLASSES,
    REPO,
    bare_loader,
    bytecode_env,
    dubai_config,
    dubai_rows,
    load_average,
    median,
    report,
)


def hand_child(spec_path: Path) -> None:
    """The hand-written loop in this interpreter; prints its epoch end times (time.time())."""
    import torch

    from benchmarks.common import Clock, hand_fit
    from landseg.models.registry import build_model

    spec = json.loads(spec_path.read_text())
    rows = {split: [(Path(a), Path(b)) for a, b in spec[split]] for split in ("train", "val")}
    torch.manual_seed(0)
    model = build_model(spec["model"], 3, len(DUBAI_CLASSES), {})
    fast = spec["precision"] != "32-true"
    stamps: list[float] = []

    class Stamps(Clock):
        def stamp(self) -> None:
            stamps.append(time.time())

    hand_fit(
        model,
        bare_loader(rows["train"], spec["batch_size"], spec["workers"], shuffle=True),
        bare_loader(rows["val"], spec["batch_size"], spec["workers"], shuffle=False),
        epochs=spec["epochs"],
        n_classes=len(DUBAI_CLASSES),
        clock=Stamps(),
        bf16=fast,
        channels_last=fast,
    )
    print(json.dumps({"epoch_ends": stamps[1:]}))  # each stamp after the first ends an epoch


def run_landseg(folder: Path, config: dict[str, Any], name: str, env: dict[str, str]) -> dict:
    here = folder / name
    here.mkdir(parents=True)
    config = json.loads(json.dumps(config))
    config["output_setup"]["output_folder"] = str(here / "runs")
    path = here / "config.json"
    path.write_text(json.dumps(config))
    start = time.time()
    subprocess.run(
        [sys.executable, "-m", "landseg.cli.main", "train", "-c", str(path)],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    end = time.time()
    scalars = next((here / "runs").rglob("logs/scalars.jsonl"))
    ends = [
        row["time"]
        for row in map(json.loads, scalars.read_text().splitlines())
        if row.get("phase") == "val"
    ]
    return {"start": start, "end": end, "epoch_ends": ends}


def run_hand(folder: Path, spec: dict[str, Any], name: str, env: dict[str, str]) -> dict:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_process", "--child", str(path)],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    end = time.time()
    return {"start": start, "end": end, **json.loads(done.stdout.strip().splitlines()[-1])}


def split_times(record: dict[str, Any]) -> dict[str, float]:
    """Whole process, steady epoch (median after the first), and the fixed cost."""
    ends = record["epoch_ends"]
    epochs = [b - a for a, b in itertools.pairwise(ends)]
    steady = median(epochs) if epochs else float("nan")
    whole = record["end"] - record["start"]
    return {
        "whole_s": round(whole, 2),
        "steady_epoch_s": round(steady, 2),
        "fixed_s": round(whole - steady * len(ends), 2),
        "epochs_s": [round(e, 2) for e in epochs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true", help="landseg's; the hand loop: "
                        "float32 for 32-true, else bf16 autocast + channels-last")  # fmt: skip
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if args.child is not None:
        hand_child(args.child)
        return
    load_before = load_average()
    train_rows, val_rows = dubai_rows("train", args.train), dubai_rows("val", args.val)
    records: dict[str, list[dict[str, float]]] = {"landseg": [], "hand": []}
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        folder = Path(tmp)
        env = bytecode_env(folder / "pycache")
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
        spec = {
            "model": args.model,
            "train": [[str(a), str(b)] for a, b in train_rows],
            "val": [[str(a), str(b)] for a, b in val_rows],
            "batch_size": args.batch_size,
            "workers": args.workers,
            "epochs": args.epochs,
            "precision": args.precision,
        }
        # a first pair warms the bytecode cache and the page cache; not counted
        run_landseg(folder, config, "warm-landseg", env)
        run_hand(folder, {**spec, "epochs": 1}, "warm-hand", env)
        for run in range(args.runs):  # alternated, so a change of load hits both alike
            records["landseg"].append(split_times(run_landseg(folder, config, f"l{run}", env)))
            records["hand"].append(split_times(run_hand(folder, spec, f"h{run}", env)))
            print(f"run {run}: load {load_average()}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"setup": vars(args) | {"child": None}, "runs": records}
    for key in ("whole_s", "steady_epoch_s", "fixed_s"):
        landseg_s = median([r[key] for r in records["landseg"]])
        hand_s = median([r[key] for r in records["hand"]])
        result[key] = {
            "landseg": round(landseg_s, 2),
            "hand": round(hand_s, 2),
            "ratio": round(landseg_s / hand_s, 4) if hand_s else None,
            "difference_s": round(landseg_s - hand_s, 2),
        }
    report("process", result, load_before)


if __name__ == "__main__":
    main()
