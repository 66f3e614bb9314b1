"""Resuming a ~25M-parameter model: checkpoint write/read time and time to the first new step.

A U-Net with a ResNet-34 encoder (``model_name: resnet34``, 24.4M parameters) trains one epoch
on tiny generated data (``landseg demo-data``: 24 tiles of 64x64). Then:

* checkpoint write: ``trainer.save_checkpoint`` (what ModelCheckpoint calls; the checkpoint
  holds the weights, Adam's two moments, loops, callbacks and landseg's random states), timed
  at the end of that run; read: ``torch.load(weights_only=True)`` of the file;
* resume: ``landseg train`` with ``continue_training: true`` in a new interpreter, from launch
  to the end of the first new training step, split into interpreter start and imports, config
  and data checks, finding the latest checkpoint, restoring (model, trainer, checkpoint) and
  the first step. The first launch compiles Python bytecode into a private cache (cold); the
  next ones reuse it (warm, as an installed package with ``.pyc`` files would).

    python -m benchmarks.bench_resume --model resnet34 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.common import (
    REPO,
    add_threads_argument,
    apply_threads,
    bytecode_env,
    load_average,
    median,
    report,
)


class SaveTimer(Callback):
    """At the end of training, times ``trainer.save_checkpoint`` and ``torch.load``."""

    def __init__(self, folder: Path, repeats: int):
        self.folder = folder
        self.repeats = repeats
        self.result: dict[str, float] = {}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        writes, reads = [], []
        for i in range(self.repeats):
            path = self.folder / f"timed-{i}.ckpt"
            start = time.perf_counter()
            trainer.save_checkpoint(path)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            torch.load(path, map_location="cpu", weights_only=True)
            reads.append(time.perf_counter() - start)
            size = path.stat().st_size
            path.unlink()
        self.result = {
            "write_s": round(median(writes), 3),
            "read_weights_only_s": round(median(reads), 3),
            "size_mb": round(size / 1e6, 1),
        }


class Timestamps(Callback):
    """Child side: wall-clock times of the resume's milestones, written as JSON on step 1."""

    def __init__(self, out: Path, stamps: dict[str, float]):
        self.out = out
        self.stamps = stamps

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.stamps["restored"] = time.time()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.stamps["first_step"] = time.time()
        self.out.write_text(json.dumps(self.stamps))
        os._exit(0)  # the measurement is over; the run stays resumable from the same checkpoint


def child(config_path: Path, out: Path) -> None:
    """Run ``landseg train -c CONFIG`` (continue_training) with milestones recorded."""
    stamps: dict[str, float] = {}
    from unittest import mock

    from landseg.planning.prepare import prepare
    from landseg.runs.checkpoints import CheckpointFolder
    from landseg.training import run as train_module

    stamps["imported"] = time.time()
    prepared = prepare(config_path, [])
    config, summary = prepared.config, prepared.summary
    stamps["checked"] = time.time()
    find = CheckpointFolder.latest

    def timed_find(folder: CheckpointFolder) -> Path | None:
        start = time.time()
        found = find(folder)
        stamps["find_checkpoint_s"] = time.time() - start
        return found

    with mock.patch.object(CheckpointFolder, "latest", timed_find):
        train_module.train(config, summary, extra_callbacks=[Timestamps(out, stamps)])
    raise SystemExit("the run ended before a training step")


def resume_once(config_path: Path, env: dict[str, str], out: Path) -> dict[str, float]:
    """Seconds from launch to each milestone of one resume, in a fresh interpreter."""
    out.unlink(missing_ok=True)
    launched = time.time()
    command = [sys.executable, "-m", "benchmarks.bench_resume", "--child", str(config_path)]
    subprocess.run([*command, "--out", str(out)], env=env, check=True, cwd=REPO)
    stamps = json.loads(out.read_text())
    return {
        "imports_s": round(stamps["imported"] - launched, 2),
        "checks_s": round(stamps["checked"] - stamps["imported"], 2),
        "find_checkpoint_s": round(stamps["find_checkpoint_s"], 2),
        "restore_s": round(stamps["restored"] - stamps["checked"] - stamps["find_checkpoint_s"], 2),
        "first_step_s": round(stamps["first_step"] - stamps["restored"], 2),
        "total_s": round(stamps["first_step"] - launched, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--tiles", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="resumes (the first is cold)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.child:
        child(args.child, args.out)
        return
    load_before = load_average()
    from landseg.data.demo import write_demo_dataset
    from landseg.models.registry import build_model
    from landseg.planning.prepare import prepare
    from landseg.training.run import train

    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        folder = Path(tmp)
        config_path = write_demo_dataset(folder / "demo", n_tiles=args.tiles, size=args.size)
        config = json.loads(config_path.read_text())
        config["data_source"].pop("test_file")
        config["train_setup"].update(model_name=args.model, epochs=1, deterministic=False)
        config["output_setup"].update(
            output_folder=str(folder / "runs"), version_name="v0", get_prediction=False, progress=0
        )
        config_path.write_text(json.dumps(config))
        prepared = prepare(config_path, [])
        checked, summary = prepared.config, prepared.summary
        timer = SaveTimer(folder, repeats=3)
        train(checked, summary, extra_callbacks=[timer])
        model = build_model(args.model, summary.n_image_bands, summary.n_classes, {})
        params = sum(p.numel() for p in model.parameters())

        config["train_setup"].update(epochs=2, continue_training=True)
        config_path.write_text(json.dumps(config))
        env = bytecode_env(folder / "pycache")
        resumes = [
            resume_once(config_path, env, folder / "stamps.json") for _ in range(args.repeats)
        ]
    warm = {key: round(median([r[key] for r in resumes[1:]]), 2) for key in resumes[0]}
    result = {
        "setup": {
            "model": args.model,
            "parameters": params,
            "tiles": args.tiles,
            "size": args.size,
        },
        "checkpoint": timer.result,
        "resume_cold_bytecode": resumes[0],
        "resume_warm_bytecode_median": warm if len(resumes) > 1 else None,
    }
    report("resume", result, load_before)


if __name__ == "__main__":
    main()
