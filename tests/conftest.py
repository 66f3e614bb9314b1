"""Shared fixtures: a tiny generated demo dataset, and the real data when it is present.

The functions tests share are in tests/helpers.py; fixtures only here."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA

_STOP_SIGNALS = [s for s in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, s)]


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """Each test gets the process's stop-signal handlers back as they were: a test that runs
    a worker's set-up in this process (which ignores Ctrl-C) must not change the next one's."""
    saved = {name: signal.getsignal(getattr(signal, name)) for name in _STOP_SIGNALS}
    yield
    for name, handler in saved.items():
        if handler is not None:
            signal.signal(getattr(signal, name), handler)


#: ``gpu``: the demo config trains on the GPU (``benchmarks/gpu_session.sh`` runs the resume
#: and precision tests so on a lent GPU machine); unset, everything runs on the CPU.
TEST_ACCELERATOR_ENV = "LANDSEG_TEST_ACCELERATOR"


@pytest.fixture(scope="session", autouse=True)
def _landseg_bytecode() -> None:
    """landseg's own modules compiled once, next to their sources, for the ``landseg``
    processes the tests start (several dozen).

    Where ``PYTHONDONTWRITEBYTECODE`` is set (CI, these machines), Python reads bytecode but
    never writes it, and an editable install's sources have none: every child compiled the
    landseg modules it imports again (about 0.1 s of CPU each). The installed packages have
    theirs (``make`` installs with ``--compile-bytecode``). Files already up to date are left
    alone; ``__pycache__`` is ignored by git."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return  # the children write and reuse it themselves
    import compileall

    import landseg

    source = Path(landseg.__file__).parent
    if os.access(source, os.W_OK):
        compileall.compile_dir(source, quiet=2, workers=1)


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
