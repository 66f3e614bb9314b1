"""The plan of a cross-validation job: groups, test subjects, tasks, and each task's own config.

A *group* is a set of tiles (a zone); scene rows (``data_source.windows``) are members of
their group whole, except with spatial blocks, where each grid window of a scene is a row
(:func:`window_block_rows`; docs/scenes.md, "Cross-validation"). A *test subject* is one
group, or several held out together (subject pairs). A *task* is one (test subject, validation
groups) pair: a full ``landseg train`` run whose CSV files are written into its own folder.
Everything here is a pure function of the config and the rows, so every launch of a job (and
every worker) derives the same task ids, CSV files and config hashes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landseg.config.choices import GROUP_SOURCES
from landseg.config.continuation import result_relevant
from landseg.config.cross_validation import CrossValidation
from landseg.config.schema import LandsegConfig, Windows
from landseg.core.errors import ConfigError, DataError, LandsegError
from landseg.core.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    folder_problem,
)
from landseg.core.registry import Registry, check_implements
from landseg.data.cache import DEFAULT_FOLDER as CACHE_FOLDER
from landseg.data.csvfiles import TESTING_SUBSET, SamplePair, val_size
from landseg.data.scene_limits import COLUMN as WINDOWS_COLUMN
from landseg.data.scene_limits import WindowLimits, touches, window_bounds
from landseg.data.summary import DataSummary
from landseg.jobs import spatial
from landseg.jobs.folder import JobFolder

# the job folder's names are JobFolder's
JOB_FILE = JobFolder.JOB_FILE
ROWS_FILE = JobFolder.ROWS_FILE
TASKS_DIR = JobFolder.TASKS_DIR
#: Bumped when job.json changes shape, so an old job folder is refused rather than misread.
JOB_FORMAT = 1
#: Task ids longer than this are cut and made unique with a hash (folder names stay short).
MAX_ID_LENGTH = 100
#: More spatial blocks than this without cross_validation.folds: a warning (many tasks).
MANY_BLOCKS = 12
#: Rectangle pairs compared at once when windows are checked against test windows.
CHUNK = 1 << 22
log = logging.getLogger("landseg.cv")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``zone2`` before ``zone10``: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(parts))


def sanitize(raw: str) -> str:
    """A folder-safe, stable id: unsafe characters become ``_`` plus a hash of the raw text.

    The hash is added only when the text had to change, so ids of plain group names stay
    readable, and two raw names that sanitise alike never share an id.
    """
    safe = re.sub(r"[^A-Za-z0-9._+=-]", "_", raw)
    if safe == raw and len(raw) <= MAX_ID_LENGTH:
        return raw
    digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:MAX_ID_LENGTH]}-{digest}"


@dataclass(frozen=True)
class Row:
    """One row of the job: its group; with folds, the group (zone, block) the fold joined
    (``origin``); with spatial blocks, the image's footprint (left, bottom, right, top).

    A scene row keeps its ``aoi``. With spatial blocks on scenes (``data_source.windows``),
    a row is one grid window of a scene: ``window`` is its top-left (row, col) pixel and
    ``bounds`` its footprint (:func:`window_block_rows`).
    """

    image: Path
    mask: Path
    group: str
    origin: str = ""
    bounds: spatial.Bounds | None = None
    aoi: Path | None = None
    window: tuple[int, int] | None = None

    @property
    def block(self) -> str:
        """The spatial block (with spatial blocks): the group before folds joined it."""
        return self.origin or self.group


@dataclass(frozen=True)
class CvTask:
    """One task of a cv job, one fold: train on ``train``, stop early on ``val``, test on
    ``test`` (group names). Named ``CvTask``, not ``Task``: in landseg's code a bare "task" is
    the LightningModule of :mod:`landseg.tasks`; users meet this one as a cv job's "task".

    ``val`` empty means the validation set is data_source.percentage_val of the training rows.
    ``buffer`` (spatial blocks): the training and validation rows closer than this to a test
    row are left out (:func:`task_rows`); on scenes, the rows are grid windows, and random
    training windows keep out of the test windows and their buffer too (:func:`task_csvs`).
    """

    id: str
    subject: str
    rotation: int  # 1-based, within the subject
    rotations: int
    test: tuple[str, ...]
    val: tuple[str, ...]
    train: tuple[str, ...]
    buffer: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CvTask:
        return cls(
            **{
                **data,
                "test": tuple(data["test"]),
                "val": tuple(data["val"]),
                "train": tuple(data["train"]),
            }
        )


def subject_name(groups: Sequence[str]) -> str:
    return "+".join(groups)


def task_id(test: Sequence[str], val: Sequence[str]) -> str:
    return sanitize(f"test-{subject_name(test)}__val-{subject_name(val) or 'split'}")


# ---------------------------------------------------------------------------- rows and groups


#: ``(rows of the CSV, cross_validation, the CSV's path) -> rows with their groups``.
GroupReader = Callable[[list[SamplePair], CrossValidation, Path], list[Row]]
#: How each group source (:data:`landseg.config.choices.GROUP_SOURCES`, a ``cross_validation``
#: key) gives each row its group.
GROUP_READERS: Registry[GroupReader] = Registry("group source")


def group_rows(
    pairs: Iterable[SamplePair],
    cv: CrossValidation,
    csv_path: Path,
    windows: Windows | None = None,
) -> list[Row]:
    """Each row with its group, as the group source that is set says (:data:`GROUP_READERS`).

    With ``windows`` (scene rows) and spatial blocks, the rows are the scenes' grid windows
    (:func:`window_block_rows`); a group column or pattern puts each scene row in its group
    whole, as a tile row.
    """
    if windows is not None and cv.group_source == "spatial_blocks":
        return window_block_rows(list(pairs), cv, windows)
    rows = GROUP_READERS.get(cv.group_source)(list(pairs), cv, csv_path)
    if windows is None:  # tile rows: a third column is no AOI, and the task CSVs stay as ever
        rows = [dataclasses.replace(row, aoi=None) if row.aoi else row for row in rows]
    return rows


@GROUP_READERS.register("group_pattern")
def pattern_rows(pairs: list[SamplePair], cv: CrossValidation, csv_path: Path) -> list[Row]:
    """Each row in the group that ``group_pattern``'s capture group finds in its image path."""
    rows: list[Row] = []
    problems: list[str] = []
    pattern = re.compile(str(cv.group_pattern))
    for pair in pairs:
        match = pattern.search(str(pair.image))
        group = match.group(1) if match else None
        if not group:
            problems.append(
                f"{pair.where()}: cross_validation.group_pattern {cv.group_pattern!r} "
                f"finds no group in {pair.image}"
            )
            continue
        rows.append(Row(pair.image, pair.mask, group, aoi=pair.aoi))
    _raise_row_problems(problems)
    return rows


@GROUP_READERS.register("group_column")
def column_rows(pairs: list[SamplePair], cv: CrossValidation, csv_path: Path) -> list[Row]:
    """Each row in the group its ``group_column`` cell names."""
    rows: list[Row] = []
    problems: list[str] = []
    for pair in pairs:
        group = pair.extra.get(str(cv.group_column), "").strip()
        if not pair.extra:
            raise DataError(
                f"{csv_path}: cross_validation.group_column {cv.group_column!r} needs a "
                "header line naming the columns, e.g. image,mask,zone"
            )
        if cv.group_column not in pair.extra:
            names = ", ".join(["image", "mask", *pair.extra])
            raise DataError(
                f"{csv_path}: no column {cv.group_column!r} for "
                f"cross_validation.group_column; columns: {names}"
            )
        if not group:
            problems.append(f"{pair.where()}: empty {cv.group_column} cell")
            continue
        rows.append(Row(pair.image, pair.mask, group, aoi=pair.aoi))
    _raise_row_problems(problems)
    return rows


def _raise_row_problems(problems: list[str]) -> None:
    if problems:
        extra = len(problems) - 10
        raise DataError(problems[:10] + ([f"... and {extra} more rows"] if extra > 0 else []))


@GROUP_READERS.register("spatial_blocks")
def block_rows(pairs: list[SamplePair], cv: CrossValidation, csv_path: Path) -> list[Row]:
    """Each row in the spatial block that holds its image's centre, with its footprint."""
    spec = cv.spatial_blocks
    if spec is None:
        raise ConfigError("cross_validation.spatial_blocks is not set")
    footprints, crs = spatial.read_footprints(pairs)
    names, size = spatial.assign_blocks(footprints, spec)
    log.info(
        "spatial blocks of %g map units (%s): %d tiles in %d blocks",
        size,
        crs,
        len(names),
        len(set(names)),
    )
    if cv.folds is None and len(set(names)) > MANY_BLOCKS:
        log.warning(
            "%d spatial blocks, each its own test subject (with rotations: n (n - 1) tasks); "
            "set cross_validation.folds to join them into fewer",
            len(set(names)),
        )
    return [
        Row(pair.image, pair.mask, name, bounds=bounds)
        for pair, name, bounds in zip(pairs, names, footprints, strict=True)
    ]


check_implements(GROUP_SOURCES, GROUP_READERS)


def window_block_rows(pairs: list[SamplePair], cv: CrossValidation, windows: Windows) -> list[Row]:
    """Spatial blocks on scene rows: one row per grid window, in the block of its centre.

    A scene spans many blocks, so its validation/test grid (:func:`grid_windows`, the
    windows of ``windows.size`` every ``windows.step`` pixels) is what is cut into blocks:
    each window is a row of the job with its footprint, and every rule of tile rows (folds,
    the buffer, the map) applies to the windows. :func:`task_csvs` gathers them back into
    scene rows.
    """
    from landseg.data.scenes import grid_windows, read_scene

    spec = cv.spatial_blocks
    if spec is None:
        raise ConfigError("cross_validation.spatial_blocks is not set")
    _, crs = spatial.read_footprints(pairs)  # every scene georeferenced, in one CRS
    found: list[tuple[SamplePair, int, int, spatial.Bounds]] = []
    for pair in pairs:
        scene = read_scene(pair)
        if min(scene.height, scene.width) < windows.size:
            raise DataError(
                f"{pair.where()}: data_source.windows.size {windows.size} is larger than "
                f"scene {pair.image} ({scene.width}x{scene.height})"
            )
        for window in grid_windows([scene], windows.size, windows.step):
            row, col, height, width = window.window
            found.append((pair, row, col, window_bounds(scene.transform, row, col, height, width)))
    names, size = spatial.assign_blocks([bounds for *_, bounds in found], spec)
    log.info(
        "spatial blocks of %g map units (%s): %d grid windows of %d scenes in %d blocks",
        size,
        crs,
        len(names),
        len(pairs),
        len(set(names)),
    )
    return [
        Row(pair.image, pair.mask, name, bounds=bounds, aoi=pair.aoi, window=(row, col))
        for (pair, row, col, bounds), name in zip(found, names, strict=True)
    ]


def fold_rows(rows: list[Row], folds: int) -> list[Row]:
    """The rows with their groups joined into ``folds`` folds (cross_validation.folds)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.group] = counts.get(row.group, 0) + 1
    assignment = spatial.join_folds(counts, folds, natural_key)
    return [dataclasses.replace(row, group=assignment[row.group], origin=row.group) for row in rows]


def _select_groups(rows: list[Row], cv: CrossValidation) -> list[str]:
    found = sorted({row.group for row in rows}, key=natural_key)
    if cv.groups is None:
        selected = found
    else:
        unknown = [g for g in cv.groups if g not in found]
        if unknown:
            raise ConfigError(
                f"cross_validation.groups: unknown group(s) {', '.join(unknown)}; "
                f"the file has: {', '.join(found)}"
            )
        selected = sorted(set(cv.groups), key=natural_key)
    if len(selected) < 2:
        raise ConfigError(
            f"cross_validation: needs at least 2 groups, found {len(selected)} "
            f"({', '.join(selected) or 'none'})"
        )
    return selected


def _subjects(cv: CrossValidation, groups: list[str]) -> list[tuple[str, ...]]:
    subjects = cv.subjects() or [(g,) for g in groups]
    seen: set[tuple[str, ...]] = set()
    for subject in subjects:
        unknown = [g for g in subject if g not in groups]
        if unknown:
            raise ConfigError(
                f"cross_validation.test_groups: unknown group(s) {', '.join(unknown)}; "
                f"the job's groups: {', '.join(groups)}"
            )
        if subject in seen or len(set(subject)) != len(subject):
            raise ConfigError(
                f"cross_validation.test_groups: {subject_name(subject)} is given twice"
            )
        seen.add(subject)
    return subjects


def _validation_sets(
    cv: CrossValidation, groups: list[str], subject: tuple[str, ...]
) -> list[tuple[str, ...]]:
    """The validation groups of each task of one test subject (``()``: percentage_val)."""
    remaining = [g for g in groups if g not in subject]
    name = subject_name(subject)
    if not remaining:
        raise ConfigError(
            f"cross_validation.test_groups: {name} holds every group; nothing is left to train on"
        )
    if cv.validation == "rotations":
        # one remaining group: it trains, and validates on percentage_val of its own rows
        return [()] if len(remaining) == 1 else [(g,) for g in remaining]
    k = int(cv.validation)
    if k == 0:
        return [()]
    if k >= len(remaining):
        raise ConfigError(
            f"cross_validation.validation: {k} validation groups leave no training group for "
            f"test subject {name} ({len(remaining)} groups remain)"
        )
    start = groups.index(subject[0])
    following = [groups[(start + i) % len(groups)] for i in range(1, len(groups))]
    chosen = [g for g in following if g not in subject][:k]
    return [tuple(sorted(chosen, key=natural_key))]


@dataclass(frozen=True)
class Plan:
    groups: tuple[str, ...]
    tasks: tuple[CvTask, ...]

    @property
    def subjects(self) -> dict[str, tuple[str, ...]]:
        """Test subject name -> its groups, in plan order."""
        return {task.subject: task.test for task in self.tasks}

    def task(self, task_id: str) -> CvTask:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise LandsegError(f"task {task_id} is not part of this job")


def build_plan(
    rows: list[Row], cv: CrossValidation, percentage_val: float
) -> tuple[Plan, list[Row]]:
    """Every task of the job, in order (test subject, then rotation), and the rows it uses.

    With cross_validation.folds, the groups are first joined into folds, which are then the
    job's groups.
    """
    if cv.folds is not None:
        rows = fold_rows(rows, cv.folds)
    groups = _select_groups(rows, cv)
    used = [row for row in rows if row.group in groups]
    buffer = cv.spatial_blocks.buffer if cv.spatial_blocks is not None else 0.0
    tasks: list[CvTask] = []
    for subject in _subjects(cv, groups):
        val_sets = _validation_sets(cv, groups, subject)
        for rotation, val in enumerate(val_sets, start=1):
            train = tuple(g for g in groups if g not in subject and g not in val)
            task = CvTask(
                id=task_id(subject, val),
                subject=subject_name(subject),
                rotation=rotation,
                rotations=len(val_sets),
                test=subject,
                val=val,
                train=train,
                buffer=buffer,
            )
            members = task_rows(task, used)
            for split in ("train", "val"):
                if buffer > 0 and (split == "train" or val) and not members[split]:
                    raise ConfigError(
                        f"cross_validation.spatial_blocks.buffer: {buffer:g} leaves no "
                        f"{'training' if split == 'train' else 'validation'} tile for task "
                        f"{task.id} (every one lies within the buffer of a test tile)"
                    )
            if not val:  # the share is of the task's training CSV rows: scenes, for windows
                windowed = [row.image for row in members["train"] if row.window is not None]
                n_train = len(members["train"]) - len(windowed) + len(set(windowed))
                _check_share(n_train, percentage_val, subject)
            tasks.append(task)
    ids = [task.id for task in tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"cross_validation: task ids collide: {', '.join(duplicates)}")
    return Plan(tuple(groups), tuple(tasks)), used


def _check_share(n_train: int, fraction: float, subject: tuple[str, ...]) -> None:
    n_val = val_size(n_train, fraction)
    if n_val < 1 or n_val >= n_train:
        raise ConfigError(
            f"data_source.percentage_val: {fraction} of the {n_train} training rows of test "
            f"subject {subject_name(subject)} leaves an empty split; validate on groups instead "
            "(cross_validation.validation) or change percentage_val"
        )


# ---------------------------------------------------------------------------- task files


def csv_text(rows: Iterable[Row], header: Sequence[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(header)
    for row in rows:
        aoi = [row.aoi] if row.aoi is not None and not header else []  # scene rows: 3rd column
        writer.writerow([row.image, row.mask, *aoi, *([row.group] if header else [])])
    return buffer.getvalue()


def rows_text(rows: Sequence[Row]) -> str:
    """``rows.csv``: every row of the job with its group, and how it was assigned.

    Columns ``image,mask,group``; with spatial blocks also ``block,x,y`` (the block and the
    image's centre, in map units); with folds of zones, ``source_group`` (the zone).
    """
    located = any(row.bounds is not None for row in rows)
    folded = any(row.origin for row in rows)
    header = ["image", "mask", "group"]
    if located:
        header += ["block", "x", "y"]
    elif folded:
        header += ["source_group"]
    scenes = any(row.aoi is not None for row in rows)
    windowed = any(row.window is not None for row in rows)
    header += ["aoi"] * scenes + ["window_row", "window_col"] * windowed
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        cells: list[Any] = [row.image, row.mask, row.group]
        if located:
            left, bottom, right, top = row.bounds or (math.nan,) * 4
            cells += [row.block, _number((left + right) / 2), _number((bottom + top) / 2)]
        elif folded:
            cells.append(row.origin)
        if scenes:
            cells.append(row.aoi or "")
        if windowed:
            cells += list(row.window or ("", ""))
        writer.writerow(cells)
    return buffer.getvalue()


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def task_rows(task: CvTask, rows: Sequence[Row]) -> dict[str, list[Row]]:
    """The task's train, val and test rows, in the job's order.

    With ``task.buffer`` > 0, the training and validation rows whose footprint lies closer
    than the buffer to the footprint of a test row are left out. Grid windows of scenes
    (:func:`window_block_rows`) that overlap a test window are left out too, whatever the
    buffer: windows of one grid overlap where a remainder is left or the stride is below
    the size, and a test window's pixels must not be a training input; so are the training
    windows that overlap a validation window.
    """
    members = {"train": task.train, "val": task.val, "test": task.test}
    split = {name: [r for r in rows if r.group in groups] for name, groups in members.items()}
    if split["test"] and any(row.window is not None for row in rows):
        keep_out = _keep_out(split["test"], task.buffer)
        for name in ("train", "val"):
            near = _touching(_footprints(split[name]), keep_out)
            split[name] = [row for row, out in zip(split[name], near, strict=True) if not out]
        if split["val"]:  # nor may a training window hold validation pixels
            near = _touching(_footprints(split["train"]), _keep_out(split["val"], 0.0))
            split["train"] = [row for row, out in zip(split["train"], near, strict=True) if not out]
    elif task.buffer > 0 and split["test"]:
        test = split["test"]
        boxes = _footprints(test)
        units = [row.block for row in test]
        for name in ("train", "val"):
            near = spatial.near_tiles(_footprints(split[name]), boxes, units, task.buffer)
            split[name] = [row for row, out in zip(split[name], near, strict=True) if not out]
    return split


def _footprints(rows: Sequence[Row]) -> Any:
    boxes = [row.bounds for row in rows]
    missing = next((row for row, box in zip(rows, boxes, strict=True) if box is None), None)
    if missing is not None:
        raise LandsegError(
            f"{missing.image}: no footprint; a buffer needs cross_validation.spatial_blocks"
        )
    return spatial.as_array(box for box in boxes if box is not None)


def _keep_out(rows: Sequence[Row], margin: float) -> Any:
    """(n, 5) the rows' footprints, each with ``margin`` (:mod:`landseg.data.scene_limits`)."""
    boxes = _footprints(rows)
    return np.concatenate([boxes, np.full((len(boxes), 1), margin)], axis=1)


def _touching(boxes: Any, keep_out: Any) -> Any:
    """Which ``boxes`` overlap or come closer than its margin to a ``keep_out`` rectangle."""
    near = np.zeros(len(boxes), dtype=bool)
    step = max(1, CHUNK // max(1, len(keep_out)))
    for start in range(0, len(boxes), step):
        if len(keep_out):
            near[start : start + step] = touches(boxes[start : start + step], keep_out)
    return near


def _scene_csvs(task: CvTask, split: dict[str, list[Row]], rows: Sequence[Row]) -> dict[str, str]:
    """Scene rows (``image,mask,aoi,windows``) of a task on grid windows, split by split.

    Each scene with windows in a split is one row there; its ``windows`` cell
    (:mod:`landseg.data.scene_limits`) lists them, so validation and test read only the
    split's own grid windows. In the training split it also keeps random windows out of the
    test windows and their buffer, and off the validation windows.
    """
    test = _keep_out(split["test"], task.buffer)
    keep_out = np.concatenate([test, _keep_out(split["val"], 0.0)]) if split["val"] else test
    scenes: dict[Path, list[Row]] = {}
    for row in rows:
        scenes.setdefault(row.image, []).append(row)
    texts: dict[str, str] = {}
    for name, selected in split.items():
        chosen: dict[Path, list[tuple[int, int]]] = {}
        for row in selected:
            chosen.setdefault(row.image, []).append(row.window or (0, 0))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "mask", "aoi", WINDOWS_COLUMN])
        for image, grid in chosen.items():
            first = scenes[image][0]
            boxes = _footprints(scenes[image])
            extent = np.array(
                [[boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]]
            )
            reach = keep_out[:0]  # only training draws random windows
            if name == "train" and len(keep_out):
                # the kept-out rectangles within reach of this scene (each keeps its margin)
                margin = np.array([[keep_out[:, 4].max()]])
                reach = keep_out[_touching(keep_out[:, :4], np.c_[extent, margin])]
            limits = WindowLimits(frozenset(grid), reach)
            writer.writerow([image, first.mask, first.aoi or "", limits.to_cell()])
        texts[name] = buffer.getvalue()
    return texts


def excluded_count(task: CvTask, rows: Sequence[Row]) -> int:
    """How many training and validation rows the task's buffer leaves out."""
    if task.buffer <= 0:
        return 0
    kept = task_rows(task, rows)
    total = sum(row.group in task.train or row.group in task.val for row in rows)
    return total - len(kept["train"]) - len(kept["val"])


def task_csvs(task: CvTask, rows: list[Row]) -> dict[str, str]:
    """The task's CSV texts (absolute paths, no header); no ``val`` when it is a share."""
    members = {"train": task.train, "val": task.val, "test": task.test}
    split = task_rows(task, rows)
    texts = (
        _scene_csvs(task, split, rows)
        if any(row.window is not None for row in rows)
        else {name: csv_text(selected) for name, selected in split.items()}
    )
    return {name: text for name, text in texts.items() if members[name]}


#: The Optuna storage of a search (``landseg tune``): a folder holding it is no cv job's.
STUDY_FILE = JobFolder.STUDY_FILE


def job_folder(config: LandsegConfig) -> Path:
    """``<output_folder>/<name_exp_log or "cv">``: stable, so re-running the command resumes."""
    return JobFolder.of_cv(config).path


def task_config(config: LandsegConfig, task: CvTask, folder: Path) -> LandsegConfig:
    """The plain train config of one task: its own CSV files, and its folder as the run folder."""
    data = config.model_dump(mode="json", exclude={"cross_validation", "search"})
    files = JobFolder(folder)
    data["data_source"].update(
        train_file=str(files.task_csv(task.id, "train")),
        val_file=str(files.task_csv(task.id, "val")) if task.val else None,
        test_file=str(files.task_csv(task.id, "test")),
    )
    if data["data_source"]["cache_dir"] is None:
        # the decoded-tile cache of the user's output folder, shared by all its jobs and runs
        # (the task's own output folder is the job's); no part of the task's hash
        data["data_source"]["cache_dir"] = str(config.output_setup.output_folder / CACHE_FOLDER)
    data["output_setup"].update(
        output_folder=str(folder), name_exp_log=TASKS_DIR, version_name=task.id, layout="odeon"
    )
    data["train_setup"]["continue_training"] = False
    return LandsegConfig.model_validate(data)


def task_hash(config: LandsegConfig, csvs: dict[str, str]) -> str:
    """What a task's results depend on: its config and its rows.

    The settings a continued run may change (:mod:`landseg.config.continuation`: hardware,
    epochs, display, logging...) are left out, so changing them between launches of a job
    does not invalidate its finished tasks.
    """
    data = result_relevant(config.model_dump(mode="json"))
    text = json.dumps({"config": data, "csv": csvs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_sizes(
    task: CvTask,
    rows: list[Row],
    config: LandsegConfig,
    grid: Callable[[Row], int] | None = None,
) -> dict[str, int]:
    """Rows per split of one task, as the datamodule will build them (for its data summary).

    Scene rows (``data_source.windows``) count windows: ``grid(row)`` per scene row (a grid
    window row counts one), and ``samples_per_epoch`` for training when it is set.
    """
    windows = config.data_source.windows
    count = grid if grid is not None and windows is not None else (lambda row: 1)
    members = task_rows(task, rows)
    size = {split: sum(count(row) for row in selected) for split, selected in members.items()}
    if not task.val and windows is None:
        size["val"] = val_size(size["train"], config.data_source.percentage_val)
        size["train"] -= size["val"]
    elif not task.val and windows is not None:
        # the datamodule holds out whole scene rows of the training CSV: the same ones here
        scenes: dict[Any, list[Row]] = {}
        for i, row in enumerate(members["train"]):
            scenes.setdefault(row.image if row.window is not None else i, []).append(row)
        units = list(scenes.values())
        held, _ = (set(part) for part in _held_out(len(units), config))
        size["val"] = sum(count(row) for i in held for row in units[i])
        size["train"] -= size["val"]
    if windows is not None and windows.samples_per_epoch:
        size["train"] = windows.samples_per_epoch
    if config.train_setup.testing:
        size = {split: min(n, TESTING_SUBSET) for split, n in size.items()}
    return size


def _held_out(n_rows: int, config: LandsegConfig) -> tuple[list[int], list[int]]:
    """Which of ``n_rows`` training CSV rows the datamodule holds out (percentage_val)."""
    from landseg.data.csvfiles import split_pairs

    indices = [SamplePair(Path(str(i)), Path(str(i)), i) for i in range(n_rows)]
    train, val = split_pairs(
        indices, config.data_source.percentage_val, config.train_setup.random_seed
    )
    return [pair.row for pair in val], [pair.row for pair in train]


# ---------------------------------------------------------------------------- the job file


#: Keys of a task entry of job.json that are not :class:`CvTask` fields.
_TASK_EXTRAS = ("hash", "split_sizes", "excluded")


@dataclass(frozen=True)
class Job:
    """A planned job: what every worker needs, saved as ``job.json`` in the job folder."""

    folder: Path
    config: LandsegConfig  # the user's config, paths resolved
    csv_file: Path
    plan: Plan
    summary: DataSummary  # of every row of the job
    hashes: dict[str, str]  # task id -> task_hash
    split_sizes: dict[str, dict[str, int]]  # task id -> split sizes
    # task id -> training and validation rows its spatial buffer leaves out
    excluded: dict[str, int] = field(default_factory=dict)
    # spatial_blocks.png, drawn when the job was prepared; written with the task files
    block_map: bytes | None = None

    @property
    def files(self) -> JobFolder:
        """The paths of the job folder."""
        return JobFolder(self.folder)

    def task_dir(self, task: CvTask) -> Path:
        return self.files.task(task.id)

    def task_config(self, task: CvTask) -> LandsegConfig:
        return task_config(self.config, task, self.folder)

    def task_summary(self, task: CvTask) -> DataSummary:
        return dataclasses.replace(self.summary, split_sizes=self.split_sizes[task.id])

    def save(self) -> None:
        atomic_write_json(
            self.files.job_file,
            {
                "format": JOB_FORMAT,
                "config": self.config.model_dump(mode="json"),
                "csv_file": str(self.csv_file),
                "groups": list(self.plan.groups),
                "tasks": [
                    {
                        **task.to_json(),
                        "hash": self.hashes[task.id],
                        "split_sizes": self.split_sizes[task.id],
                        "excluded": self.excluded.get(task.id, 0),
                    }
                    for task in self.plan.tasks
                ],
                "data_summary": dataclasses.asdict(self.summary),
            },
        )

    @classmethod
    def load(cls, folder: Path) -> Job:
        path = JobFolder(folder).job_file
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise LandsegError(f"{path}: not a readable cross-validation job file") from error
        if data.get("format") != JOB_FORMAT:
            raise LandsegError(f"{path}: job file format {data.get('format')}, expected 1")
        tasks = [
            CvTask.from_json({k: v for k, v in item.items() if k not in _TASK_EXTRAS})
            for item in data["tasks"]
        ]
        summary = data["data_summary"]
        return cls(
            folder=folder,
            config=LandsegConfig.model_validate(data["config"]),
            csv_file=Path(data["csv_file"]),
            plan=Plan(tuple(data["groups"]), tuple(tasks)),
            summary=DataSummary(
                **{
                    **summary,
                    "class_labels": tuple(summary["class_labels"]),
                    "patch_size": tuple(summary["patch_size"]),
                }
            ),
            hashes={item["id"]: item["hash"] for item in data["tasks"]},
            split_sizes={item["id"]: item["split_sizes"] for item in data["tasks"]},
            excluded={item["id"]: item.get("excluded", 0) for item in data["tasks"]},
        )


def write_task_files(job: Job, rows: list[Row]) -> None:
    """The job's rows (``rows.csv``, and the spatial blocks' map) and each task's CSV files.

    Called once the job log has accepted the plan, so a refused command (another config,
    other rows, bad data) leaves an existing job's files as they were. Each file is written
    only when it changes: a finished task keeps the files it trained on.
    """
    records = {job.files.rows: rows_text(rows).encode()}
    if job.block_map is not None:
        records[job.files.block_map] = job.block_map
    for path, data in records.items():
        if not (path.is_file() and path.read_bytes() == data):
            atomic_write_bytes(path, data)
    for task in job.plan.tasks:
        for split, text in task_csvs(task, rows).items():
            path = job.files.task_csv(task.id, split)
            if not (path.is_file() and path.read_text() == text):
                atomic_write_text(path, text)


# ---------------------------------------------------------------------------- preparing a job


def cv_section(config: LandsegConfig, source: Path) -> CrossValidation:
    if config.cross_validation is None:
        raise ConfigError(
            f"{source}: no cross_validation section; landseg cv needs one "
            "(see docs/cross_validation.md)"
        )
    return config.cross_validation


def _job_csv(config: LandsegConfig, cv: CrossValidation) -> Path:
    """cross_validation.file (made absolute with the config's other paths), else train_file."""
    return config.data_source.train_file if cv.file is None else cv.file


def _note_ignored_keys(config: LandsegConfig) -> None:
    data, out = config.data_source, config.output_setup
    ignored = [key for key in ("val_file", "test_file") if getattr(data, key) is not None]
    if ignored:
        log.warning(
            "data_source.%s not used by landseg cv: each task's splits come from its groups",
            " and ".join(ignored),
        )
    if out.version_name is not None or out.layout != "odeon":
        log.warning(
            "output_setup.version_name and layout are not used by landseg cv: tasks live in "
            "<job folder>/tasks/<task id>"
        )


def whole_data_config(config: LandsegConfig, csv_file: Path) -> LandsegConfig:
    """The config that checks every row of the job at once, read once.

    Every row is in some task's training split, so they are all checked as training rows
    (one tile size); the same file given as the test split too was read, and counted, twice.
    """
    data = config.model_dump(mode="json", exclude={"cross_validation", "search"})
    data["data_source"].update(train_file=str(csv_file), val_file=None, test_file=None)
    return LandsegConfig.model_validate(data)


def job_of_task(run: Path) -> Path | None:
    """The cross-validation job folder ``run`` is a task of (``<job>/tasks/<task>``), or None."""
    job = JobFolder.of_task(run)
    return job.path if job is not None else None


def prepare_job(
    config_path: Path,
    overrides: list[str],
    *,
    dry_run: bool = False,
    device_check: bool = True,
) -> tuple[Job, list[Row]]:
    """Config file -> planned, checked job: every check (config, data, model) before any work.

    The data are checked once for the whole job (one read of each raster header): through the
    job's CSV file, so problems name its rows, or through a scratch ``rows.csv`` (every row
    of the job with its group) when cross_validation.groups leaves rows out. Nothing is
    written here: the job folder gets its ``rows.csv`` when the job starts
    (:func:`write_task_files`), after the job log has accepted the plan.
    """
    import tempfile

    from landseg.data.csvfiles import read_pairs
    from landseg.planning.prepare import prepare, prepare_config

    config = prepare_config(config_path, overrides)
    cv = cv_section(config, config_path)
    csv_file = _job_csv(config, cv)
    _note_ignored_keys(config)
    windows = config.data_source.windows
    rows = group_rows(read_pairs(csv_file), cv, csv_file, windows)
    plan, used = build_plan(rows, cv, config.data_source.percentage_val)
    folder = job_folder(config)
    problem = folder_problem(folder)
    if problem:
        raise ConfigError(f"output_setup.name_exp_log: cannot make the job folder: {problem}")
    if JobFolder(folder).is_search:  # a cv job written there would replace its summary
        raise ConfigError(
            f"output_setup.name_exp_log: {folder} holds a search (landseg tune); give the "
            "cross-validation job another name_exp_log, or continue the search with landseg tune"
        )
    block_map = None
    with tempfile.TemporaryDirectory(prefix="landseg-job-") as scratch:
        scratch_files = JobFolder(Path(scratch))  # the job folder's names, in a scratch folder
        rows_file = scratch_files.rows
        atomic_write_text(rows_file, rows_text(used))
        # scene rows are checked through the job's CSV: rows.csv may list a scene per window
        checked = csv_file if len(used) == len(rows) or windows is not None else rows_file
        whole = whole_data_config(config, checked)
        summary = prepare(whole, device_check=device_check, one_run=False).summary
        if cv.spatial_blocks is not None and not dry_run:
            _write_block_map(scratch_files.block_map, rows, used, cv)
            block_map = scratch_files.block_map.read_bytes()
    hashes, sizes, excluded = {}, {}, {}
    unit = "grid windows" if any(row.window is not None for row in used) else "tiles"
    counts = grid_counts(used, windows)  # scene headers, read once
    for task in plan.tasks:
        hashes[task.id] = task_hash(task_config(config, task, folder), task_csvs(task, used))
        sizes[task.id] = split_sizes(task, used, config, counts)
        excluded[task.id] = excluded_count(task, used)
        if task.buffer > 0:
            log.info(
                "task %s: %d training and validation %s within %g map units of its test "
                "%s left out",
                task.id,
                excluded[task.id],
                unit,
                task.buffer,
                unit,
            )
    job = Job(folder, config, csv_file, plan, summary, hashes, sizes, excluded, block_map)
    return job, used


def grid_counts(rows: list[Row], windows: Windows | None) -> Callable[[Row], int]:
    """Grid windows per job row: one for a window row, its scene's grid for a scene row."""
    if windows is None:
        return lambda row: 1
    from landseg.data.csvfiles import SamplePair
    from landseg.data.scenes import grid_offsets, read_scene

    counts: dict[Path, int] = {}
    for row in rows:
        if row.window is None and row.image not in counts:
            scene = read_scene(SamplePair(row.image, row.mask, 0))
            counts[row.image] = len(grid_offsets(scene.height, windows.size, windows.step)) * len(
                grid_offsets(scene.width, windows.size, windows.step)
            )
    return lambda row: 1 if row.window is not None else counts[row.image]


def _write_block_map(path: Path, rows: list[Row], used: list[Row], cv: CrossValidation) -> None:
    """The map of the job's groups; the block size is that of every row of the CSV."""
    if cv.spatial_blocks is None:
        return
    everything = [row.bounds for row in rows if row.bounds is not None]
    size = spatial.block_size(spatial.centres(everything), cv.spatial_blocks)
    footprints = [row.bounds for row in used if row.bounds is not None]
    crs = spatial.crs_name_of(used[0].image) if used else ""
    spatial.write_map(path, footprints, [row.group for row in used], size, crs, natural_key)
