"""The run folder: every path of a run, and its ``run.json`` state.

This module is the one owner of a run folder's layout and the one writer of ``run.json``.
Other modules never join file names onto a run path themselves: they ask :class:`RunFolder`
(``run.history``, ``run.checkpoints``, ``run.scalars``...), read ``run.json`` as a
:class:`RunState` and change it through :meth:`RunFolder.write_state` alone (reached by
:meth:`RunFolder.record_start`, :meth:`~RunFolder.record_validation`,
:meth:`~RunFolder.record_end` and :meth:`~RunFolder.update_state`). Checkpoints (names,
choice, loading) are :mod:`landseg.runs.checkpoints`'s.

Layout (as in ODEON's train tool): ``<output_folder>/<name_exp_log>/<version_name>/``,
defaults the launch date ``YYYY-MM-DD`` and time ``HH-MM-SS``; or
``<output_folder>/<datamodule>/<model>/
<version>`` with ``output_setup.layout: datamodule_model``. ``run.json`` records the state
(running, finished, failed, interrupted) and is rewritten atomically at each change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from landseg.config.continuation import continuation_problems
from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError, RunFolderError
from landseg.core.files import atomic_write_json, folder_problem
from landseg.core.processes import pid_alive, process_start
from landseg.launch.cluster import global_rank_zero, slurm_job_id
from landseg.launch.hardware import FastPaths
from landseg.runs.checkpoints import (
    CHECKPOINT_DIR,
    CheckpointFolder,
    CheckpointKind,
    CheckpointName,
)

log = logging.getLogger(__name__)

#: Set by rank 0 so that the processes Lightning launches for DDP reuse its run folder.
RUN_DIR_ENV = "LANDSEG_RUN_DIR"
#: ``<output_folder>/slurm/<job>``: the run folder of an unnamed run in a SLURM batch job.
SLURM_DIR = "slurm"

RunStatus = Literal["running", "finished", "failed", "interrupted", "unknown"]


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- run.json


class CsvRecord(BaseModel):
    path: str
    sha256: str


class ArchiveRecord(BaseModel):
    """Where an archived run came from (``from`` in run.json) and when it was archived."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    source: str = Field(validation_alias="from", serialization_alias="from")
    date: str


class RunState(BaseModel):
    """``run.json``: what a run is and where it stands.

    Unknown keys are kept (``extra="allow"``), so a run folder written by a newer landseg is
    read, and rewritten, without losing what it recorded.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    status: str = "unknown"
    started: str | None = None
    ended: str | None = None
    pid: int | None = None
    process_start: str | None = None
    host: str | None = None
    command: list[str] = Field(default_factory=list)
    model: str | None = None
    datamodule: str | None = None
    epochs: int | None = None
    epochs_done: int = 0
    early_stopped: bool = False
    csv: dict[str, CsvRecord] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    best: dict[str, float] = Field(default_factory=dict)
    resumed: list[Any] = Field(default_factory=list)
    error: str | None = None
    archived: ArchiveRecord | None = None
    #: what ``device_setup.precision``/``channels_last`` (``auto`` included) resolved to when
    #: the run started; a continued run keeps it, whichever machine it continues on
    precision: str | None = None
    channels_last: bool | None = None
    fast_paths_reason: str | None = None
    #: ``model_params.encoder_weights`` as loaded when the run started: the file's name,
    #: size and SHA-256, the tensors loaded, missing and unused, the first layer's band mapping
    encoder_weights: dict[str, Any] | None = None
    #: ``train_setup.freeze_encoder_epochs`` and ``encoder_lr_factor``, where either is set
    fine_tuning: dict[str, Any] | None = None
    #: the mean and std per band that the run's pretrained encoder weights carry, where
    #: each band's came from, and whether the run normalises with them (it does when
    #: data_source.normalization_weights is not set)
    normalization_from_weights: dict[str, Any] | None = None

    @classmethod
    def read(cls, run_dir: Path) -> RunState | None:
        """The state recorded in ``run_dir``, or None where there is no readable run.json."""
        try:
            return cls.model_validate_json((Path(run_dir) / RunFolder.RUN_FILE).read_bytes())
        except (OSError, ValueError, ValidationError):
            return None

    def write(self, run_dir: Path) -> None:
        """Replace ``run_dir``'s run.json with this state (:meth:`RunFolder.write_state`)."""
        RunFolder(Path(run_dir)).write_state(self)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


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


def initial_state(config: LandsegConfig) -> RunState:
    """The state of a run that starts now in this process."""
    data = config.data_source
    csvs = {
        split: CsvRecord(path=str(path), sha256=file_sha256(path))
        for split, path in (
            ("train", data.train_file),
            ("val", data.val_file),
            ("test", data.test_file),
        )
        if path is not None
    }
    return RunState(
        status="running",
        started=now_iso(),
        pid=os.getpid(),
        process_start=process_start(os.getpid()),
        host=socket.gethostname(),
        command=list(sys.argv),
        model=config.train_setup.model_name,
        datamodule="csv",
        epochs=config.train_setup.epochs,
        csv=csvs,
        versions=library_versions(),
        fine_tuning=fine_tuning(config),
    )


def fine_tuning(config: LandsegConfig) -> dict[str, Any] | None:
    """The fine-tuning controls a run trains with, None where neither is set (run.json then
    stays as it was before they existed)."""
    train = config.train_setup
    if train.freeze_encoder_epochs == 0 and train.encoder_lr_factor == 1.0:
        return None
    return {
        "freeze_encoder_epochs": train.freeze_encoder_epochs,
        "encoder_lr_factor": train.encoder_lr_factor,
    }


# ---------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: its paths, its state, its checkpoints.

    ``resuming`` says whether the folder held a run already when this process took it;
    ``made`` is the topmost folder this process created for it (None: the folder was there).
    """

    path: Path
    resuming: bool = False
    made: Path | None = None

    RUN_FILE = "run.json"
    CONFIG_FILE = "config.json"
    CHECKPOINT_DIR = CHECKPOINT_DIR
    HISTORY_FILE = "history.json"
    TEST_HISTORY_FILE = "history_test.json"
    SCALARS_FILE = "logs/scalars.jsonl"
    ARRAYS_DIR = "arrays"
    FIGURES_DIR = "figures"

    # ------------------------------------------------------------------ paths

    @property
    def run_file(self) -> Path:
        return self.path / self.RUN_FILE

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINT_DIR

    @property
    def history(self) -> Path:
        return self.path / self.HISTORY_FILE

    @property
    def test_history(self) -> Path:
        return self.path / self.TEST_HISTORY_FILE

    @property
    def scalars(self) -> Path:
        return self.path / self.SCALARS_FILE

    @property
    def arrays(self) -> Path:
        return self.path / self.ARRAYS_DIR

    @property
    def figures(self) -> Path:
        return self.path / self.FIGURES_DIR

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    @property
    def csv_logs(self) -> Path:
        return self.path / "csv_logs"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"

    @property
    def report(self) -> Path:
        """``landseg report``'s page and figures."""
        return self.path / "report"

    @property
    def train_log(self) -> Path:
        return self.path / "train.log"

    @property
    def model_summary(self) -> Path:
        return self.path / "model_summary.txt"

    @property
    def error_file(self) -> Path:
        """The traceback of a failed cross-validation task."""
        return self.path / "error.txt"

    @property
    def is_run(self) -> bool:
        return self.run_file.is_file()

    def never_trained(self) -> bool:
        """Whether the folder holds a run that failed or was stopped before its first epoch
        ended and wrote no checkpoint (its process gone): nothing in it is worth keeping, and
        its version name may be used again."""
        if self.checkpoint_files() or not self.path.is_dir():
            return False
        state = RunState.read(self.path)
        if state is None:
            return not self.config_file.exists()  # a folder left before run.json was written
        if state.status not in ("failed", "interrupted", "running") or state.epochs_done > 0:
            return False
        if state.status != "running":  # written by the process itself on its way out
            return True
        here = state.host in (None, socket.gethostname())
        return here and not (state.pid is not None and pid_alive(state.pid, state.process_start))

    def remove_failed_start(self) -> bool:
        """Remove the folder this process made for a run that then failed to start (before
        its run.json was written), and the empty folders above it it made: a refused or
        failed start leaves no stray version folder holding an empty ``train.log`` behind.
        Whether it removed anything."""
        if self.made is None or self.is_run or not self.path.is_dir():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        folder = self.path.parent
        while folder != self.made.parent and self.made in (folder, *folder.parents):
            try:
                folder.rmdir()  # only when empty: another run may have started beside it
            except OSError:
                break
            folder = folder.parent
        return not self.path.exists()

    # ------------------------------------------------------------------ state

    def state(self) -> RunState:
        """``run.json`` (an empty state where there is none yet)."""
        return RunState.read(self.path) or RunState()

    def write_state(self, state: RunState) -> RunState:
        """The one writer of ``run.json``: ``state``, checked, written atomically."""
        state = RunState.model_validate(state.to_json())  # checks changed fields too
        atomic_write_json(self.run_file, state.to_json())
        return state

    def update_state(self, **changes: Any) -> RunState:
        """Change some fields of ``run.json`` and rewrite it atomically."""
        return self.write_state(self.state().model_copy(update=changes))

    def record_start(
        self, config: LandsegConfig, changes: dict[str, list[Any]], fast: FastPaths
    ) -> RunState:
        """A run starts (or continues) in this process with ``config``: its state is running.

        A continued run keeps its start time, best metrics and epochs done, and adds this
        launch to ``resumed`` with the settings it changed; ``fast`` is the precision and
        memory format it trains with.
        """
        previous = RunState.read(self.path)
        if previous is None and self.resuming and self.run_file.is_file():
            log.warning(
                "%s: unreadable (damaged?); rewritten without the run's start time and "
                "earlier resumes",
                self.run_file,
            )
        state = initial_state(config)
        if previous is not None and self.resuming:
            state = state.model_copy(
                update={
                    "started": previous.started or state.started,
                    "resumed": [*previous.resumed, {"at": now_iso(), "changed": changes}],
                    "best": previous.best,
                    "epochs_done": previous.epochs_done,
                    "encoder_weights": previous.encoder_weights,
                }
            )
        state = state.model_copy(
            update={
                "precision": fast.precision,
                "channels_last": fast.channels_last,
                "fast_paths_reason": fast.reason,
            }
        )
        return self.write_state(state)

    def record_validation(
        self, epochs_done: int, val_loss: float | None, val_miou: float | None
    ) -> RunState:
        """A validation ended: the epochs done, and the best val_loss and val_miou so far."""
        state = self.state()
        best = dict(state.best)
        if val_loss is not None and val_loss < best.get("val_loss", float("inf")):
            best["val_loss"] = val_loss
        if val_miou is not None and val_miou > best.get("val_miou", float("-inf")):
            best["val_miou"] = val_miou
        return self.write_state(state.model_copy(update={"epochs_done": epochs_done, "best": best}))

    def record_end(
        self, status: RunStatus, *, error: str | None = None, early_stopped: bool | None = None
    ) -> RunState:
        """The run ended (finished, failed, interrupted) now; ``error``: why it failed."""
        changes: dict[str, Any] = {"status": status, "ended": now_iso()}
        if error is not None:
            changes["error"] = error
        if early_stopped is not None:
            changes["early_stopped"] = early_stopped
        return self.update_state(**changes)

    def config_data(self) -> dict[str, Any] | None:
        """The resolved config the run recorded (``config.json``), as plain JSON types."""
        try:
            data = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def continuation_changes(self, config: LandsegConfig) -> dict[str, list[Any]]:
        """The settings continuing this run with ``config`` changes, against its own
        ``config.json``: ``{key: [before, after]}``.

        Raises :class:`~landseg.core.errors.ConfigError` with one line per setting that may not
        change (see :mod:`landseg.config.continuation`); it reads and writes nothing else,
        so ``landseg validate`` makes the same refusal as ``landseg train``.
        """
        recorded = self.config_data()
        if recorded is None:  # a run that never wrote its config has nothing to keep
            return {}
        try:
            old = LandsegConfig.model_validate(recorded).model_dump(mode="json")
        except ValidationError:  # written by another landseg version: compare as recorded
            old = recorded
        allowed, problems = continuation_problems(old, config.model_dump(mode="json"))
        if problems:
            first = f"{self.path}: cannot continue this run with these settings"
            if self.path.parent.name == SLURM_DIR:  # chosen by the job, not by the config
                first += (
                    " (an unnamed run's folder is its SLURM job's, so that a requeued job "
                    "continues it; to start another run in the same job, set "
                    "output_setup.name_exp_log or version_name)"
                )
            raise ConfigError([first, *problems])
        return {key: [before, after] for key, (before, after) in allowed.items()}

    # ------------------------------------------------------------------ checkpoints
    # (their names, choice and pruning are :mod:`landseg.runs.checkpoints`'s)

    @property
    def checkpoint_folder(self) -> CheckpointFolder:
        return CheckpointFolder(self.checkpoints)

    def checkpoint_path(self, base: str, kind: CheckpointKind, **fields: Any) -> Path:
        return self.checkpoint_folder.file(base, kind, **fields)

    def checkpoint_files(self) -> list[tuple[Path, CheckpointName]]:
        """Every checkpoint landseg wrote in this run, with what its name says, sorted."""
        return self.checkpoint_folder.files()

    def best_checkpoint(self) -> Path | None:
        """The checkpoint with the lowest val_loss in its name; else ``last``; else any."""
        return self.checkpoint_folder.best()

    def resumable_checkpoints(self) -> list[Path]:
        """The ``last`` and step checkpoints: those a continued run may start from."""
        return self.checkpoint_folder.resumable()

    def step_checkpoints(self) -> list[Path]:
        return self.checkpoint_folder.steps()

    def latest_checkpoint(self) -> Path | None:
        """The resumable checkpoint with the most training steps."""
        return self.checkpoint_folder.latest()


# ---------------------------------------------------------------------------- choosing the folder


def slurm_job_name(environ: Mapping[str, str] | None = None) -> str | None:
    """``job-<id>`` (``job-<array id>_<task id>`` for an array task) inside a SLURM batch
    job (detected as Lightning's ``SLURMEnvironment.detect`` does), else None."""
    job = slurm_job_id(environ)
    return f"job-{job}" if job else None


def _run_path(config: LandsegConfig, experiment: str | None, version: str) -> Path:
    out = config.output_setup
    if out.layout == "datamodule_model":
        model = config.train_setup.model_name.replace(":", "-")
        return out.output_folder / "csv" / model / version
    return out.output_folder / (experiment or "") / version


def resolve_run_folder(
    config: LandsegConfig, now: dt.datetime | None = None, *, create: bool = True
) -> RunFolder:
    """Pick the run folder; never reuse an existing version unless continue_training.

    ``create=False`` (``landseg validate``): the same refusals, and whether the folder could
    be made, with nothing created."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:  # a DDP worker process: rank 0 already chose and created the folder
        return RunFolder(Path(inherited), resuming=config.train_setup.continue_training)
    now = now or dt.datetime.now()
    out = config.output_setup
    slurm = slurm_job_name()
    if slurm is not None and out.name_exp_log is None and out.version_name is None:
        return _slurm_run_folder(config, slurm, create)
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
    failed_start = exists and RunFolder(path).never_trained()
    if failed_start:
        exists = False  # nothing was trained there: the version starts again
    if exists and not continuing:
        raise RunFolderError(
            f"output_setup.version_name: run folder {path} already exists; set "
            "train_setup.continue_training true to resume it, or choose another version_name"
        )
    if continuing and not exists and not failed_start:
        raise RunFolderError(
            f"train_setup.continue_training: no run to continue at {path}; "
            "set continue_training false to start it"
        )
    if not create:
        problem = folder_problem(path)
        if problem:
            raise RunFolderError(
                f"output_setup.output_folder: cannot write the run folder {path}: {problem}"
            )
        return RunFolder(path, resuming=exists)
    made = make_run_folder(path)
    return RunFolder(path, resuming=exists, made=made)


def make_run_folder(path: Path) -> Path | None:
    """Create a planned run folder (``resolve_run_folder(create=False)`` chose it), make sure
    it can be written to, and return the topmost folder this created (None: it was there),
    which :meth:`RunFolder.remove_failed_start` removes if the start then fails."""
    made = first_missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(
            f"output_setup.output_folder: cannot write the run folder {path}: {error.strerror}"
        ) from error
    return made


def first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (None: ``path`` exists)."""
    missing = None
    while not path.exists() and path.parent != path:
        missing, path = path, path.parent
    return missing


def _slurm_run_folder(config: LandsegConfig, job: str, create: bool = True) -> RunFolder:
    """``<output_folder>/slurm/<job>``: a requeued or relaunched job finds its own run there.

    The folder is named by the job, so a run found in it was started by this same job (before
    a requeue, a preemption or a node failure) and is continued, without the user editing
    the config; any other launch has another job id, and so another folder.
    """
    path = config.output_setup.output_folder / SLURM_DIR / job
    run = RunFolder(path)
    resuming = run.is_run and not run.never_trained()
    if resuming and os.environ.get("SLURM_RESTART_COUNT", "0") == "0" and global_rank_zero():
        # no requeue: a second training launched in the same job finds the first one's run
        log.warning(
            "%s: this SLURM job's run folder holds a run already, which is continued; to "
            "start another run in the same job, set output_setup.name_exp_log or version_name",
            path,
        )
    if not create:
        return RunFolder(path, resuming=resuming)
    made = first_missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(
            f"output_setup.output_folder: cannot write the run folder {path}: {error.strerror}"
        ) from error
    return RunFolder(path, resuming=resuming, made=made)


def latest_version(experiment_dir: Path) -> Path | None:
    """The most recently started version of an experiment (for continue_training)."""
    if not experiment_dir.is_dir():
        return None
    versions = [p for p in experiment_dir.iterdir() if RunFolder(p).is_run]
    return max(versions, key=lambda p: RunFolder(p).run_file.stat().st_mtime, default=None)
