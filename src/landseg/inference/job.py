"""A prediction job: ``landseg predict --output DIR`` that never predicts a scene twice.

The one owner of a job's state; nothing else reads or writes these files::

    DIR/predict.json                  what the job is: the model (file, SHA-256), the
                                      settings that change its outputs, when it began
    DIR/.predict/done/<stem>.json     an input finished: its output files and their sizes
    DIR/.predict/partial/<stem>.tif   a scene being predicted: its staging raster, tiled
    DIR/.predict/partial/<stem>.json  ... and the rows of it on disk
    DIR/.predict/partial/<stem>.pieces.json
                                      a scene cut among MPI ranks: its pieces' rows
    DIR/.predict/partial/<stem>.rows-<first>-<stop>.tif / .json
                                      ... each piece's staging raster and rows on disk

Why files and not one predict.json (or SQLite as cv's job log): the processes of a job
(``--shard i/n`` of a SLURM job array, often on several nodes, over a shared file system) each
predict their own inputs, and each input's state is written by the one process that predicts
it, in a file of its own, atomically (:mod:`landseg.core.files`). No two processes ever write
one file with different contents: ``predict.json`` is written by whichever comes first and
only compared by the others. One JSON file rewritten by every shard would lose updates (two
read-modify-writes at once), and SQLite needs file locks that NFS and Lustre do not always
keep (cv's log has one writer per host for that reason).

A scene's progress is kept a strip at a time: its staging raster is written a block row at a
time (:func:`landseg.maps.cog.resumable_cog_writer`), and the rows on disk are recorded after
the file is closed and synced, so a killed scene continues where its record says, and the
finished raster is the same, byte for byte, as a scene predicted in one go
(:func:`landseg.inference.scene.blended_strips` recomputes its strips exactly).

A large scene (a VRT mosaic of a region, say) is cut among the ranks of an MPI launch, in
pieces of whole rows (:func:`cut_rows`), so that every rank has work when the inputs are
fewer than the ranks. The cut is recorded once (``<stem>.pieces.json``, by rank 0 before any
piece is predicted) and kept by every later launch, whatever its number of ranks, so each
piece's progress stays valid; a launch that is not under MPI continues the pieces left. Each
piece is a staging raster of its own (sparse outside its rows), recorded as a scene's is;
once every piece is in, one process copies them, top to bottom, into the scene's COG
(:func:`landseg.inference.scene.assemble_scene`): the same file as the scene predicted whole.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landseg.core.errors import LandsegError
from landseg.core.files import atomic_write_json, remove_stale_temporaries
from landseg.runs.folder import now_iso

JOB_FILE = "predict.json"
STATE_DIR = ".predict"
FORMAT = 1


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard i/n`` -> (i, n), 0 <= i < n (``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard: I/N with 0 <= I < N (e.g. 0/4), got {text}")
    return shard


def shard_inputs(inputs: Sequence[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The inputs of shard ``(i, n)``: input k of the inputs sorted by path belongs to shard
    k mod n, so every shard computes the same split from the same inputs, with no
    communication, and the n shards together hold each input once."""
    if shard is None:
        return list(inputs)
    index, count = shard
    ordered = sorted(inputs, key=str)
    return [source for k, source in enumerate(ordered) if k % count == index]


def share_pieces(
    inputs: Sequence[Path], cut: dict[Path, list[tuple[int, int]]], shard: tuple[int, int]
) -> tuple[list[Path], dict[Path, list[tuple[int, int]]]]:
    """The work of shard ``(i, n)`` when some inputs are cut in pieces (``cut``: their rows):
    as :func:`shard_inputs`, over the units of work (an input not cut, or a piece of one)
    sorted by path and first row. Returns the inputs this shard works on, in that order, and
    the pieces it predicts of each cut one."""
    units = sorted(
        [(str(p), 0, p, None) for p in inputs if p not in cut]
        + [(str(p), rows[0], p, rows) for p in inputs if p in cut for rows in cut[p]],
        key=lambda unit: unit[:2],
    )
    index, count = shard
    mine: list[Path] = []
    rows: dict[Path, list[tuple[int, int]]] = {}
    for k, (_, _, source, piece) in enumerate(units):
        if k % count != index:
            continue
        if source not in mine:
            mine.append(source)
        if piece is not None:
            rows.setdefault(source, []).append(piece)
    return mine, rows


#: A piece of a scene cut among ranks holds about this many strides of tiles or more (give or
#: take the rounding of its cuts): the tile rows recomputed above each cut (those reaching
#: into it, about one) then cost about 6 % at most.
PIECE_STRIDES = 16
#: Pieces start on multiples of this many rows: whole tile rows of the COG.
PIECE_ROWS = 256


def cut_rows(height: int, ranks: int, stride: int) -> list[tuple[int, int]]:
    """The rows ``(first, stop)`` of the pieces a scene ``height`` rows high is cut into for
    ``ranks`` processes: as many pieces as ranks, fewer when a piece would be shorter than
    :data:`PIECE_STRIDES` strides; of even heights, each cut rounded to the nearest multiple of
    :data:`PIECE_ROWS` (so a piece is within that many rows of the others); one piece
    (``[(0, height)]``) for a scene too small to cut."""
    least = -(-max(PIECE_STRIDES * stride, PIECE_ROWS) // PIECE_ROWS) * PIECE_ROWS
    count = max(1, min(ranks, height // least))
    cuts = sorted({round(k * height / count / PIECE_ROWS) * PIECE_ROWS for k in range(1, count)})
    edges = [0, *(row for row in cuts if 0 < row < height), height]
    return list(itertools.pairwise(edges))


@dataclass(frozen=True)
class JobIdentity:
    """What makes two launches one job: the model's bytes and the settings that change the
    outputs. ``model_file`` is informational (a moved file with the same bytes is the same
    model)."""

    model_file: str
    model_sha256: str
    settings: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "model": {"file": self.model_file, "sha256": self.model_sha256},
            "settings": self.settings,
        }

    def difference(self, recorded: dict[str, Any]) -> str | None:
        """The first thing that differs from a recorded job, ``name: old -> new``; None."""
        model = recorded.get("model", {})
        if model.get("sha256") != self.model_sha256:
            return (
                f"model: {model.get('file')} (sha256 {str(model.get('sha256'))[:12]}) -> "
                f"{self.model_file} (sha256 {self.model_sha256[:12]})"
            )
        old = recorded.get("settings", {})
        for name in sorted(set(old) | set(self.settings)):
            if old.get(name) != self.settings.get(name):
                return f"{name}: {_shown(old.get(name))} -> {_shown(self.settings.get(name))}"
        return None


def _shown(value: Any) -> str:
    return "none" if value is None else json.dumps(value) if not isinstance(value, str) else value


@dataclass
class ScenePart:
    """The progress of one scene of a job (:class:`landseg.inference.scene.StripProgress`):
    picklable, so that a ``--workers`` process records its own scene's rows."""

    record_file: Path
    staging: Path
    source: str
    height: int
    width: int
    rows_done: int = 0
    tiles: int = 0
    first_row: int = 0  # a piece of a scene cut among ranks: its rows
    stop_row: int | None = None  # None: the whole scene

    @property
    def done(self) -> bool:
        """Every row of the piece on disk (a whole scene is done when its record is)."""
        return self.stop_row is not None and self.rows_done >= self.stop_row

    def record(self, rows: int) -> None:
        """``rows`` rows of the staging raster are on disk (closed and synced)."""
        self.rows_done = rows
        atomic_write_json(
            self.record_file,
            {
                "input": self.source,
                "height": self.height,
                "width": self.width,
                "rows_done": rows,
                "tiles": self.tiles,
                **(
                    {"first_row": self.first_row, "stop_row": self.stop_row}
                    if self.stop_row is not None
                    else {}
                ),
            },
        )


@dataclass
class PredictJob:
    """The job in ``folder`` (``--output``): see the module's docstring."""

    folder: Path
    _recorded: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def job_file(self) -> Path:
        return self.folder / JOB_FILE

    @property
    def state_dir(self) -> Path:
        return self.folder / STATE_DIR

    def _done_file(self, source: Path) -> Path:
        return self.state_dir / "done" / f"{Path(source).stem}.json"

    def _partial(self, source: Path, rows: tuple[int, int] | None = None) -> tuple[Path, Path]:
        """The record and staging raster of ``source`` (of its piece ``rows``)."""
        stem = Path(source).stem + ("" if rows is None else f".rows-{rows[0]}-{rows[1]}")
        return (
            self.state_dir / "partial" / f"{stem}.json",
            self.state_dir / "partial" / f"{stem}.tif",
        )

    def _pieces_file(self, source: Path) -> Path:
        return self.state_dir / "partial" / f"{Path(source).stem}.pieces.json"

    def _state_files(self, source: Path) -> list[Path]:
        """Every file of ``source``'s unfinished prediction: whole, and its pieces'."""
        files = list(self._partial(source))
        for rows in self.pieces(source) or []:
            files += self._partial(source, rows)
        return [*files, self._pieces_file(source)]  # last: it names the pieces' files

    # ------------------------------------------------------------------ the job

    def recorded(self) -> dict[str, Any] | None:
        """The job's ``predict.json`` (None: no job in the folder yet)."""
        if not self.job_file.is_file():
            return None
        try:
            data = json.loads(self.job_file.read_text())
        except (OSError, ValueError) as error:
            raise LandsegError(
                f"{self.job_file}: unreadable ({error}); add --overwrite to start the job over"
            ) from error
        if not isinstance(data, dict):
            raise LandsegError(f"{self.job_file}: not a prediction job's record")
        return data

    def refusal(self, identity: JobIdentity) -> str | None:
        """Why this folder's job is not ``identity``'s (one line), or None."""
        recorded = self.recorded()
        if recorded is None:
            return None
        difference = identity.difference(recorded)
        if difference is None:
            return None
        return (
            f"--output {self.folder}: holds a prediction job with another {difference}; "
            "predict into another folder, or add --overwrite to start over"
        )

    def start(self, identity: JobIdentity, overwrite: bool = False, alone: bool = True) -> None:
        """Begin (or continue) the job: with ``overwrite``, the state of a previous job is
        removed first; ``predict.json`` is written when the folder has none. ``alone``: no
        other process of the job runs (no ``--shard``), so the temporary files that a killed
        writer left are removed (the staging rasters are no temporaries); a shard leaves them,
        since they may be another shard's files being written."""
        if overwrite:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.job_file.unlink(missing_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.recorded() is None:
            atomic_write_json(
                self.job_file, {"format": FORMAT, **identity.as_json(), "created": now_iso()}
            )
        if alone:
            for stale in sorted(self.folder.glob(".*.tmp")):
                stale.unlink(missing_ok=True)
            if self.state_dir.is_dir():
                remove_stale_temporaries(self.state_dir)

    # ------------------------------------------------------------------ inputs

    def is_done(self, source: Path) -> bool:
        """Whether ``source`` was finished by an earlier launch, its outputs as recorded (a
        deleted or replaced output is predicted again)."""
        path = self._done_file(source)
        if not path.is_file():
            return False
        try:
            outputs = json.loads(path.read_text())["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        for output in outputs:
            file = self.folder / output["file"]
            if not file.is_file() or file.stat().st_size != output["bytes"]:
                return False
        return True

    def finished(self, inputs: Sequence[Path]) -> list[Path]:
        return [source for source in inputs if self.is_done(source)]

    def part(
        self, source: Path, height: int, width: int, rows: tuple[int, int] | None = None
    ) -> ScenePart:
        """Where ``source``'s prediction (its piece ``rows``) keeps its progress: continued
        from its record when the staging raster is there and the same size, else from its
        first row."""
        record_file, staging = self._partial(source, rows)
        first, stop = rows if rows is not None else (0, None)
        part = ScenePart(record_file, staging, str(source), height, width, first, 0, first, stop)
        try:
            data = json.loads(record_file.read_text())
        except (OSError, ValueError):
            return part
        if (
            staging.is_file()
            and isinstance(data, dict)
            and data.get("height") == height
            and data.get("width") == width
            and isinstance(data.get("rows_done"), int)
            and first <= data["rows_done"] <= (height if stop is None else stop)
        ):
            part.rows_done = data["rows_done"]
            part.tiles = int(data.get("tiles", 0))
        return part

    # ------------------------------------------------------------------ pieces

    def pieces(self, source: Path, height: int | None = None) -> list[tuple[int, int]] | None:
        """The rows of the pieces ``source`` was cut into among ranks (None: not cut). With
        ``height``, None too when they do not cover rows 0 to ``height`` one after the other:
        a cut of the input as it was before it changed (a VRT of a region grown), whose
        pieces would leave its new rows out of the assembled raster."""
        try:
            data = json.loads(self._pieces_file(source).read_text())
            pieces = [(int(first), int(stop)) for first, stop in data["pieces"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if height is not None:
            edges = [0, *(stop for _, stop in pieces)]
            if not pieces or [first for first, _ in pieces] != edges[:-1] or edges[-1] != height:
                return None
        return pieces

    def cut(self, source: Path, pieces: Sequence[tuple[int, int]]) -> None:
        """Record that ``source`` is predicted in ``pieces`` (rows), unless it already is: an
        earlier cut of the same rows stands, since its pieces' progress is kept in its terms.
        An earlier cut of other rows (the input changed) is replaced, its files removed."""
        if self.pieces(source, pieces[-1][1]) is not None:
            return
        for rows in self.pieces(source) or []:
            for path in self._partial(source, rows):
                path.unlink(missing_ok=True)
        atomic_write_json(
            self._pieces_file(source),
            {"input": str(source), "pieces": [list(rows) for rows in pieces]},
        )

    def rows_done(self, source: Path) -> int:
        """The rows of ``source`` on disk from an unfinished launch (0: none)."""
        try:
            return int(json.loads(self._partial(source)[0].read_text())["rows_done"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def finish(self, source: Path, outputs: Sequence[Path], tiles: int) -> None:
        """``source`` is finished: its outputs (in the job folder) and the tiles its
        prediction sent through the model, over every launch; its staging files go."""
        entries = [
            {"file": str(Path(p).relative_to(self.folder)), "bytes": Path(p).stat().st_size}
            for p in outputs
        ]
        atomic_write_json(
            self._done_file(source),
            {"input": str(source), "outputs": entries, "tiles": tiles, "finished": now_iso()},
        )
        for path in self._state_files(source):
            path.unlink(missing_ok=True)

    def tidy(self, finished: Sequence[Path]) -> None:
        """Remove the staging files of inputs already finished (a kill between an input's
        record and the removal of its staging files leaves them)."""
        for source in finished:
            for path in self._state_files(source):
                path.unlink(missing_ok=True)

    def finished_rasters(self) -> list[Path]:
        """The rasters of every input finished (by any launch or shard), sorted."""
        return sorted(p for p in self._finished_outputs() if p.suffix == ".tif")

    def _finished_outputs(self) -> list[Path]:
        found = []
        for record in sorted((self.state_dir / "done").glob("*.json")):
            try:
                outputs = json.loads(record.read_text())["outputs"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found += [self.folder / o["file"] for o in outputs]
        return [p for p in found if p.is_file()]

    def finished_vectors(self) -> list[Path]:
        """The GeoPackages (``--vectorize``) of every input finished, sorted."""
        return sorted(p for p in self._finished_outputs() if p.suffix == ".gpkg")

    def done_record(self, source: Path) -> dict[str, Any]:
        """The record of a finished input (for a report or a test)."""
        data: dict[str, Any] = json.loads(self._done_file(source).read_text())
        return data
