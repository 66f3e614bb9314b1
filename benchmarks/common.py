"""What the benchmarks share: the machine's description, the landseg config of the Dubai
subset, and the epoch clock inside landseg; the data, the bare reader and the hand-written loop
come from :mod:`benchmarks.plain` (re-exported here), which imports no Lightning.

Lightning is imported only when :class:`EpochClock` is first used (a module ``__getattr__``):
importing this module for the hand-written loop or the data alone does not pay for it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.host import host, load_average  # noqa: F401 (re-exported for the benchmarks)
from benchmarks.plain import (  # noqa: F401 (re-exported for the benchmarks)
    DUBAI,
    DUBAI_CLASSES,
    IGNORE,
    REPO,
    SHARED_DATA,
    BareTiles,
    Clock,
    Row,
    bare_loader,
    bytecode_env,
    confusion,
    dubai_rows,
    hand_fit,
    mean_iou,
    median,
    onehot_to_index,
    read_pair,
    write_csv,
)

# ---------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """Where a figure was measured: date, cores, CPU model, RAM, load, versions."""
    return {**host(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def report(name: str, result: dict[str, Any], load_before: str) -> None:
    """Print one benchmark's result as JSON, with the machine and its load before and after."""
    info = machine()
    info["load_before"] = load_before
    print(json.dumps({"benchmark": name, "machine": info, **result}, indent=2, default=str))


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads here and in child processes (default: torch's own); on a "
        "loaded 2-core machine 1 is faster and steadier than 2",
    )


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads, for this process and (through OMP_NUM_THREADS) its children."""
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


# ---------------------------------------------------------------------------- the data


def dubai_config(
    folder: Path,
    train: Sequence[Row],
    val: Sequence[Row],
    *,
    model: str = "lightunet",
    epochs: int = 3,
    batch_size: int = 8,
    workers: int = 0,
    logging: bool = True,
) -> dict[str, Any]:
    """A landseg config on these rows; ``logging``: history, TensorBoard, top-k checkpoints."""
    return {
        "data_source": {
            "train_file": str(write_csv(train, folder / "train.csv")),
            "val_file": str(write_csv(val, folder / "val.csv")),
            "image_bands": [1, 2, 3],
            "mask_bands": [1, 2, 3, 4, 5, 6],
            "class_labels": DUBAI_CLASSES,
        },
        "train_setup": {
            "model_name": model,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": 0.001,
            "loss": "ce",
            "optimizer_config": {"optimizer": "adam"},
            "random_seed": 0,
        },
        "output_setup": {
            "output_folder": str(folder / "runs"),
            "name_exp_log": "bench",
            "use_tensorboard": logging,
            "save_history": logging,
            "log_learning_rate": logging,
            "save_top_k": 2 if logging else 0,
            "get_prediction": False,
            "progress": 0,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": workers},
    }


# ---------------------------------------------------------------------------- timing


def _epoch_clock_class() -> type:
    from lightning.pytorch.callbacks import Callback

    class EpochClock(Callback):
        """Stamps the start of every train epoch and the end of training, from inside landseg.

        An epoch then spans training, validation, checkpoints, history and every logger, as
        the hand-written loop's epoch spans its training and validation passes.
        """

        def __init__(self, sync: Callable[[], None] | None = None):
            self.clock = Clock(sync)
            self.first_step: float | None = None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.clock.stamp()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if self.first_step is None:
                self.first_step = time.time()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.clock.stamp()

    return EpochClock


def __getattr__(name: str) -> Any:
    """``EpochClock``, a Lightning callback, built (and Lightning imported) on first use."""
    if name == "EpochClock":
        cls = _epoch_clock_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
