"""Run folders: where a training run lives and what state it is in.

Layout (004): ``<output_folder>/<name_exp_log>/<version_name>/``, defaults the launch date
``YYYY-MM-DD`` and time ``HH-MM-SS``; or seed 003's ``<output_folder>/<datamodule>/<model>/
<version>`` with ``output_setup.layout: datamodule_model``. ``run.json`` records the state
(running, finished, failed, interrupted) and is rewritten atomically at each change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landseg.config.schema import LandsegConfig
from landseg.errors import RunFolderError
from landseg.io import atomic_write_json
from landseg.processes import process_start

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.json"
TEST_HISTORY_FILE = "history_test.json"
#: Set by rank 0 so that the processes Lightning launches for DDP reuse its run folder.
RUN_DIR_ENV = "LANDSEG_RUN_DIR"


@dataclass(frozen=True)
class RunFolder:
    path: Path
    resuming: bool

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def read_state(self) -> dict[str, Any]:
        return read_run_state(self.path)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        state = {**self.read_state(), **changes}
        atomic_write_json(self.path / RUN_FILE, state)
        return state


def read_run_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _run_path(config: LandsegConfig, experiment: str | None, version: str) -> Path:
    out = config.output_setup
    if out.layout == "datamodule_model":
        model = config.train_setup.model_name.replace(":", "-")
        return out.output_folder / "csv" / model / version
    return out.output_folder / (experiment or "") / version


def resolve_run_folder(config: LandsegConfig, now: dt.datetime | None = None) -> RunFolder:
    """Pick the run folder; never reuse an existing version unless continue_training."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:  # a DDP worker process: rank 0 already chose and created the folder
        return RunFolder(Path(inherited), resuming=config.train_setup.continue_training)
    now = now or dt.datetime.now()
    out = config.output_setup
    experiment = out.name_exp_log or now.strftime("%Y-%m-%d")
    continuing = config.train_setup.continue_training
    if out.version_name is None and continuing:
        path = latest_version(_run_path(config, experiment, "x").parent)
        if path is None:
            raise RunFolderError(
                "train_setup.continue_training: no run to continue in "
                f"{_run_path(config, experiment, 'x').parent}; set output_setup.version_name"
            )
    else:
        path = _run_path(config, experiment, out.version_name or now.strftime("%H-%M-%S"))
    exists = path.is_dir() and any(path.iterdir())
    if exists and not continuing:
        raise RunFolderError(
            f"output_setup.version_name: run folder {path} already exists; set "
            "train_setup.continue_training true to resume it, or choose another version_name"
        )
    if continuing and not exists:
        raise RunFolderError(
            f"train_setup.continue_training: no run to continue at {path}; "
            "set continue_training false to start it"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(
            f"output_setup.output_folder: cannot write the run folder {path}: {error.strerror}"
        ) from error
    return RunFolder(path, resuming=exists)


def latest_version(experiment_dir: Path) -> Path | None:
    """The most recently started version of an experiment (for continue_training)."""
    if not experiment_dir.is_dir():
        return None
    versions = [p for p in experiment_dir.iterdir() if (p / RUN_FILE).is_file()]
    return max(versions, key=lambda p: (p / RUN_FILE).stat().st_mtime, default=None)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "landseg",
        "torch",
        "lightning",
        "torchmetrics",
        "segmentation-models-pytorch",
        "rasterio",
        "numpy",
        "pydantic",
    ]
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def initial_state(config: LandsegConfig) -> dict[str, Any]:
    data = config.data_source
    csvs = {
        split: {"path": str(path), "sha256": file_sha256(path)}
        for split, path in (
            ("train", data.train_file),
            ("val", data.val_file),
            ("test", data.test_file),
        )
        if path is not None
    }
    return {
        "status": "running",
        "started": now_iso(),
        "ended": None,
        "pid": os.getpid(),
        "process_start": process_start(os.getpid()),
        "host": socket.gethostname(),
        "command": sys.argv,
        "model": config.train_setup.model_name,
        "datamodule": "csv",
        "epochs": config.train_setup.epochs,
        "csv": csvs,
        "versions": library_versions(),
    }
