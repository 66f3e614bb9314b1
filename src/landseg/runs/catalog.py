"""The runs of an output folder: list them, archive a validated one, find one by path or name.

A run is any folder holding a ``run.json`` (see :class:`~landseg.runs.folder.RunFolder`), so
both layouts are found without being told which: ``<output>/<experiment>/<version>``
(ODEON's, the default) and the ``datamodule_model`` layout's
``<output>/<datamodule>/<model>/<version>``. Archiving
renames a version in place to ``archived_vX_yyyy-mm-dd`` (X: the next free number among the
archived versions of the same parent folder) with one ``os.rename``, records ``archived:
{from, date}`` in its ``run.json`` and appends an entry to ``archive.json`` in the output
folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from landseg.core.errors import LandsegError, RunFolderError
from landseg.core.files import atomic_write_json
from landseg.core.processes import pid_alive
from landseg.runs.checkpoints import CheckpointName
from landseg.runs.folder import ArchiveRecord, RunFolder, RunState

log = logging.getLogger(__name__)

ARCHIVE_INDEX = "archive.json"
ARCHIVED_NAME = re.compile(r"^archived_v(\d+)_\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class RunInfo:
    """One row of ``landseg runs``: what a run is and where it stands."""

    path: Path
    experiment: str
    version: str
    model: str | None
    data: str | None
    epochs_done: int
    epochs: int | None
    val_loss: float | None
    val_miou: float | None
    status: str
    size: int
    started: str | None
    archived: dict[str, str] | None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


# ---------------------------------------------------------------------------- status


def effective_status(state: RunState) -> str:
    """``run.json``'s status, but ``interrupted`` for a run whose process died on this host.

    A run killed hard (SIGKILL, power loss) never rewrites its own status; a pid that no longer
    exists on the host it ran on tells. On another host nothing can be told: it stays running.
    """
    if (
        state.status == "running"
        and state.host == socket.gethostname()
        and state.pid is not None
        and not pid_alive(state.pid, state.process_start)
    ):
        return "interrupted"
    return state.status


def refuse_archived_run(run: Path) -> None:
    """Raise for an archive (``archived_vX_yyyy-mm-dd``): it is kept as it was validated, for
    reference; continuing it would prune its checkpoints and change its metrics.
    A copy under another name is a run of its own and may be continued."""
    if ARCHIVED_NAME.match(run.name):
        raise LandsegError(
            f"{run}: an archived run is kept as it was validated; to train it further, copy "
            "the folder under another name and continue the copy, or start a new run from "
            "its weights with train_setup.init_weights"
        )


def refuse_live_run(run: Path) -> None:
    """Raise if another live process of this host trains ``run``: two writers would corrupt it.

    A run that says ``running`` on another host cannot be checked from here; it is most often
    a cluster job killed on one node and continued on another, so it is continued, with a
    warning.
    """
    state = RunFolder(run).state()
    pid = state.pid
    if effective_status(state) != "running" or pid == os.getpid():
        return
    host = state.host
    if host != socket.gethostname():
        log.warning(
            "%s: run.json says running (pid %s on host %s), which cannot be checked from "
            "here; continuing it. Make sure that process has ended.",
            run,
            pid,
            host,
        )
        return
    raise RunFolderError(
        f"{run}: the run is still being trained (pid {pid} on this host); stop that process "
        "or wait for it to end before continuing it"
    )


# ---------------------------------------------------------------------------- listing


def find_run_dirs(output: Path) -> list[Path]:
    """Every folder under ``output`` (itself included) that holds a run.json, sorted."""
    found: list[Path] = []
    for root, dirs, files in os.walk(output):
        if RunFolder.RUN_FILE in files:
            found.append(Path(root))
            dirs.clear()  # a run's subfolders hold no other run
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found)


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path`` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile
                continue
    return total


def _train_csv_name(state: RunState) -> str | None:
    train = state.csv.get("train")
    return Path(train.path).name if train is not None and train.path else None


def run_info(path: Path, output: Path) -> RunInfo:
    folder = RunFolder(path)
    state = folder.state()
    if folder.run_file.is_file() and RunState.read(path) is None:
        log.warning("%s: unreadable (damaged?); the run is shown as unknown", folder.run_file)
    parent = path.parent.relative_to(output) if path != output else Path()
    return RunInfo(
        path=path,
        experiment=parent.as_posix() if parent.parts else ".",
        version=path.name,
        model=state.model,
        data=_train_csv_name(state),
        epochs_done=state.epochs_done,
        epochs=state.epochs,
        val_loss=state.best.get("val_loss"),
        val_miou=state.best.get("val_miou"),
        status=effective_status(state),
        size=folder_size(path),
        started=state.started,
        archived=(state.archived.model_dump(by_alias=True) if state.archived is not None else None),
    )


def list_runs(output: Path) -> list[RunInfo]:
    """The runs under ``output``, by experiment then start time."""
    output = Path(output)
    if output.is_file():
        raise LandsegError(f"{output}: is a file, not an output folder")
    if not output.is_dir():
        raise LandsegError(f"{output}: output folder does not exist")
    infos = [run_info(path, output) for path in find_run_dirs(output)]
    return sorted(infos, key=lambda info: (info.experiment, info.started or "", info.version))


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- checkpoints


def best_checkpoint(run: Path) -> Path | None:
    """The checkpoint with the lowest val_loss in its name; else ``*-last.ckpt``; else any
    (chosen by :class:`landseg.runs.checkpoints.CheckpointFolder`)."""
    return RunFolder(run).best_checkpoint()


# ---------------------------------------------------------------------------- resolving


def resolve_run(reference: str | Path, search: Path | None = None) -> Path:
    """A run folder from its path, its folder name or a qualified name.

    A name (e.g. ``archived_v1_2026-11-22``) is looked up among the runs under ``search``
    (default: the working directory) and must match exactly one. Archived names repeat across
    experiments, so a name may be qualified by the folders above it: ``EXP/NAME`` (a relative
    path under ``search``) matches the runs whose path ends with those folders.
    """
    path = Path(reference)
    if path.is_dir():
        if not RunFolder(path).is_run:
            raise LandsegError(f"{path}: not a run folder (no {RunFolder.RUN_FILE})")
        return path
    if path.is_file():
        inside = RunFolder(path.parent).is_run
        raise LandsegError(
            f"{path}: is a file, not a run folder"
            + (f"; its run folder is {path.parent}" if inside else "")
        )
    archive = _archive_of(path.absolute())
    if archive is not None:
        raise LandsegError(f"{reference}: was archived as {archive}")
    root = Path(search) if search is not None else Path.cwd()
    parts = path.parts
    if path.is_absolute() or not parts or ".." in parts or not root.is_dir():
        raise LandsegError(f"{reference}: no such run folder or run name under {root}")
    matches = [run for run in find_run_dirs(root) if _qualified(run, root)[-len(parts) :] == parts]
    if not matches:
        raise LandsegError(f"{reference}: no run of that name under {root} (see landseg runs)")
    if len(matches) > 1:
        names = ["/".join(_qualified(run, root)) for run in matches]
        raise LandsegError(
            f"{reference}: several runs have that name under {root}: {', '.join(names)}; "
            f"qualify it as EXP/NAME with the folder above it, e.g. {names[0]}"
        )
    return matches[0]


def _archive_of(gone: Path) -> Path | None:
    """The archive that a run folder which no longer exists was renamed to (its siblings'
    ``run.json`` record where they came from)."""
    if not gone.parent.is_dir():
        return None
    for sibling in sorted(gone.parent.iterdir()):
        state = RunState.read(sibling) if ARCHIVED_NAME.match(sibling.name) else None
        if state is None or state.archived is None:
            continue
        source = Path(state.archived.source).parts  # relative to the output folder, mostly
        if gone.parts[-len(source) :] == source:
            return sibling
    return None


def _qualified(run: Path, root: Path) -> tuple[str, ...]:
    """The folders from ``root`` down to ``run`` (its name alone when it is ``root``)."""
    return run.relative_to(root).parts or (run.name,)


def weights_run(path: str | Path) -> RunFolder:
    """The run folder of a ``.pth`` of network weights: the folder it lies in (``model_out_ext:
    .pth``), or the run above its ``checkpoints/`` (``export_checkpoint: pth``).

    A ``.pth`` holds no config, so the model it belongs to comes from that run; outside a run
    folder it is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise LandsegError(f"{path}: weights file not found")
    folder = path.absolute().parent
    candidates = [folder]
    if folder.name == RunFolder.CHECKPOINT_DIR:
        candidates.append(folder.parent)
    for candidate in candidates:
        run = RunFolder(candidate)
        if run.is_run or run.config_file.is_file():
            return run
    raise LandsegError(
        f"{path}: a .pth holds the network's weights but no config, and it is not inside a run "
        f"folder (none of {', '.join(str(c) for c in candidates)} holds {RunFolder.RUN_FILE}) "
        "to build the model from; pass the run folder or a .ckpt"
    )


def resolve_checkpoint(reference: str | Path, search: Path | None = None) -> Path:
    """A ``.ckpt`` path as given, a ``.pth`` inside its run folder (see :func:`weights_run`),
    or the best val_loss checkpoint of a run (path or name)."""
    path = Path(reference)
    if path.suffix == CheckpointName.SUFFIX:
        if not path.is_file():
            raise LandsegError(f"{path}: checkpoint not found")
        return path
    if path.suffix == ".pth":
        weights_run(path)
        return path
    run = resolve_run(reference, search)
    checkpoint = best_checkpoint(run)
    if checkpoint is None:
        raise LandsegError(f"{run}: the run has no checkpoint in {RunFolder.CHECKPOINT_DIR}/")
    return checkpoint


# ---------------------------------------------------------------------------- archiving


def output_folder_of(run: Path) -> Path:
    """The output folder a run belongs to, from the layout its config.json names."""
    try:
        config = RunFolder(run).config_data() or {}
        layout = config["output_setup"].get("layout", "odeon")
    except (KeyError, TypeError, AttributeError):
        layout = "odeon"
    return run.parents[2] if layout == "datamodule_model" else run.parents[1]


def next_archive_name(parent: Path, date: dt.date) -> str:
    numbers = [
        int(match.group(1))
        for match in (ARCHIVED_NAME.match(p.name) for p in parent.iterdir())
        if match
    ]
    return f"archived_v{max(numbers, default=0) + 1}_{date.isoformat()}"


def archive_run(run: Path, output: Path | None = None, today: dt.date | None = None) -> Path:
    """Rename a finished run to ``archived_vX_yyyy-mm-dd`` and record it; returns the new path.

    Refuses a run that is still running, has no checkpoint, or is archived already. The rename
    is one ``os.rename`` within the same folder, so the run is never half moved.
    """
    run = Path(run).absolute()
    folder = RunFolder(run)
    read = RunState.read(run)
    if read is None:
        raise LandsegError(f"{run}: not a run folder (no readable {RunFolder.RUN_FILE})")
    state = read
    status = effective_status(state)
    if status == "running":
        if state.host not in (None, socket.gethostname()):
            raise LandsegError(
                f"{run}: run.json says running (pid {state.pid} on host {state.host}), which "
                "cannot be checked from here; wait for it, or if that process is gone (a "
                "failed node), continue the run to its end (landseg train --resume) and "
                "archive it then"
            )
        raise LandsegError(f"{run}: the run is still running (pid {state.pid}); wait for it")
    if ARCHIVED_NAME.match(run.name) or state.archived is not None:
        raise LandsegError(f"{run}: already archived")
    if folder.best_checkpoint() is None:
        raise LandsegError(
            f"{run}: no checkpoint in {RunFolder.CHECKPOINT_DIR}/; nothing worth archiving"
        )
    output = Path(output).absolute() if output is not None else output_folder_of(run)
    date = today or dt.date.today()
    name = next_archive_name(run.parent, date)
    target = run.parent / name
    if target.exists():  # another archive won the race for this number
        raise LandsegError(f"{target}: already exists; run landseg archive again")
    # all three writes are checked before the first: a run renamed but not recorded (or
    # recorded nowhere) would be "already archived" to every later attempt
    if output.exists() and not output.is_dir():
        raise LandsegError(f"{output}: not a folder, needed for archive.json; nothing changed")
    for place, needed_for in (
        (run.parent, "renaming the run"),
        (run, "marking its run.json"),
        (output, "writing archive.json"),
    ):
        if place.exists() and not os.access(place, os.W_OK | os.X_OK):
            raise LandsegError(f"{place}: not writable, needed for {needed_for}; nothing changed")
    os.rename(run, target)
    record = ArchiveRecord(source=_relative(run, output), date=date.isoformat())
    RunFolder(target).write_state(state.model_copy(update={"archived": record}))
    _add_to_index(output, target, record, state)
    return target


def _add_to_index(output: Path, target: Path, record: ArchiveRecord, state: RunState) -> None:
    """Append the archived run to ``<output>/archive.json`` (rewritten atomically)."""
    index_path = output / ARCHIVE_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entries = [e for e in index.get("archived", []) if isinstance(e, dict)]
    entries.append(
        {
            "name": target.name,
            "path": _relative(target, output),
            **record.model_dump(by_alias=True),
            "model": state.model,
            "best": state.best,
        }
    )
    atomic_write_json(index_path, {"archived": entries})


def _relative(path: Path, output: Path) -> str:
    """``path`` relative to the output folder when inside it (what archive.json records)."""
    try:
        return path.relative_to(output).as_posix()
    except ValueError:
        return str(path)
