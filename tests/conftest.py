"""Shared fixtures: a tiny generated demo dataset, and the real data when it is present."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
#: ``gpu``: the demo config trains on the GPU (``benchmarks/gpu_session.sh`` runs the resume
#: and precision tests so on a lent GPU machine); unset, everything runs on the CPU.
TEST_ACCELERATOR_ENV = "LANDSEG_TEST_ACCELERATOR"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset (4 bands, 4 classes, 32x32 tiles) and its demo.json."""
    from landseg.data.demo import write_demo_dataset

    folder = tmp_path_factory.mktemp("demo")
    write_demo_dataset(folder, n_tiles=24, size=32, seed=0)
    return folder


@pytest.fixture
def demo_config(demo_dir: Path, tmp_path: Path) -> dict:
    """The demo config as a dict, with absolute data paths and output in tmp_path."""
    config = json.loads((demo_dir / "demo.json").read_text())
    for key in ("train_file", "val_file", "test_file"):
        if config["data_source"].get(key):
            config["data_source"][key] = str(demo_dir / config["data_source"][key])
    config["output_setup"]["output_folder"] = str(tmp_path / "runs")
    config["output_setup"]["progress"] = 0
    if os.environ.get(TEST_ACCELERATOR_ENV) == "gpu":  # the suite's runs on a GPU machine
        config["device_setup"].update(accelerator="gpu", device=1)
    return config


def sigkill_when(command: list[str], moment: Callable[[], bool], timeout: float = 300) -> int:
    """Run ``landseg COMMAND`` in a subprocess, SIGKILL it as soon as ``moment()`` is true.

    Returns the exit status (``-SIGKILL`` when killed; the command's own if it ended first).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "landseg.cli.main", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if moment():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return process.wait()


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (a user's clone has no shared data)")
    return SHARED_DATA


@pytest.fixture
def copy_tree():
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return copy
