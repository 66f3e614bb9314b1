"""Checkpoints: the one owner of their names, choice, pruning, loading and writing.

Every other module asks here instead of joining, parsing or loading checkpoint files itself:

- names: :func:`base_name` (the stem every checkpoint of a run starts with),
  :class:`CheckpointName` (writes and reads ``<base>-loss-...``, ``-miou-...``, ``-step=...``,
  ``-last``, ``-epoch=...``), :func:`export_stem` (``<base>-best``, the extra formats of
  ``export_checkpoint``), :class:`PthFiles` (ODEON's ``.pth`` trio), :func:`base_of` (a file's
  base name read back);
- choosing and pruning: :class:`CheckpointFolder` (best, latest, resumable, step checkpoints;
  pruning after a resume; keeping the newest step checkpoint), :func:`best_of_fit`;
- loading and writing: :func:`load_checkpoint` (``weights_only``: never code),
  :func:`save_checkpoint` (atomic), :func:`load_weights` (a network's weights into a module or
  a part of it, with the report of missing, unexpected and mis-shaped weights).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from landseg.config.schema import LandsegConfig
from landseg.core.errors import LandsegError
from landseg.core.files import atomic_path

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

log = logging.getLogger(__name__)

CheckpointKind = Literal["loss", "miou", "step", "last", "epoch"]

#: The folder of a run that holds its checkpoints.
CHECKPOINT_DIR = "checkpoints"
#: ``<base>-best``: the stem of the extra formats written after a fit (export_checkpoint).
BEST_SUFFIX = "-best"
#: A landseg task keeps its network as ``model``: a Lightning checkpoint's network weights are
#: its ``state_dict`` entries under this prefix.
NETWORK_PREFIX = "model."


# ---------------------------------------------------------------------------- names


def base_name(config: LandsegConfig) -> str:
    """``model_filename`` (without extension) or the model name: the stem of every checkpoint."""
    name = config.output_setup.model_filename or config.train_setup.model_name
    return Path(name.replace(":", "-")).stem


@dataclass(frozen=True)
class CheckpointName:
    """The one place that both writes and reads checkpoint file names.

    ``<base>-loss-epoch=003-val_loss=0.1234``, ``<base>-miou-epoch=003-val_miou=0.5678``
    (the top-k files), ``<base>-step=0000120`` (step checkpoints), ``<base>-last`` and
    ``<base>-epoch=003`` (a cross-validation task's epoch checkpoints, base = its task id).
    Lightning may add ``-v1`` to a name that exists already; :meth:`parse` accepts it.
    """

    base: str
    kind: CheckpointKind
    epoch: int | None = None
    step: int | None = None
    value: float | None = None

    SUFFIX = ".ckpt"

    @staticmethod
    def template(base: str, kind: CheckpointKind) -> str:
        """The ``filename`` Lightning's ModelCheckpoint formats for this kind (no suffix)."""
        templates = {
            "loss": f"{base}-loss-epoch={{epoch:03d}}-val_loss={{val_loss:.4f}}",
            "miou": f"{base}-miou-epoch={{epoch:03d}}-val_miou={{val_miou:.4f}}",
            "step": f"{base}-step={{step:07d}}",
            "last": f"{base}-last",
            "epoch": f"{base}-epoch={{epoch:03d}}",
        }
        return templates[kind]

    _PATTERN = re.compile(
        r"^(?P<base>.+?)-(?:"
        r"loss-epoch=(?P<loss_epoch>\d+)-val_loss=(?P<loss>[-+0-9.eE]+|nan|inf)"
        r"|miou-epoch=(?P<miou_epoch>\d+)-val_miou=(?P<miou>[-+0-9.eE]+|nan|inf)"
        r"|step=(?P<step>\d+)"
        r"|(?P<last>last)"
        r"|epoch=(?P<epoch>\d+)"
        r")(?:-v\d+)?$"
    )

    @classmethod
    def parse(cls, path: str | Path) -> CheckpointName | None:
        """What a checkpoint file's name says, or None for a name landseg does not write."""
        path = Path(path)
        if path.suffix != cls.SUFFIX:
            return None
        match = cls._PATTERN.match(path.stem)
        if match is None:
            return None
        groups = match.groupdict()
        base = groups["base"]
        if groups["loss_epoch"] is not None:
            return cls(base, "loss", epoch=int(groups["loss_epoch"]), value=float(groups["loss"]))
        if groups["miou_epoch"] is not None:
            return cls(base, "miou", epoch=int(groups["miou_epoch"]), value=float(groups["miou"]))
        if groups["step"] is not None:
            return cls(base, "step", step=int(groups["step"]))
        if groups["last"] is not None:
            return cls(base, "last")
        return cls(base, "epoch", epoch=int(groups["epoch"]))

    @property
    def resumable(self) -> bool:
        """Whether a run may continue from this checkpoint (its newest state: last or step)."""
        return self.kind in ("last", "step")


def export_stem(checkpoints: Path, base: str) -> Path:
    """``<checkpoints>/<base>-best``: the extra formats of the best model get its suffixes."""
    return Path(checkpoints) / f"{base}{BEST_SUFFIX}"


def base_of(path: str | Path) -> str:
    """The base name of a checkpoint file (``<base>-loss-epoch=...``, ``<base>-best.pth``),
    else its stem: what an export of it is named after."""
    path = Path(path)
    parsed = CheckpointName.parse(path)
    if parsed is not None:
        return parsed.base
    return path.stem.removesuffix(BEST_SUFFIX) if path.suffix == ".pth" else path.stem


@dataclass(frozen=True)
class PthFiles:
    """ODEON's ``.pth`` outputs (``model_out_ext: .pth``) in a run folder: ``<name>.pth`` (the
    network's state_dict), ``optimizer_<name>.pth`` and ``train_<name>.pth`` (epoch, step,
    loss, learning rate)."""

    folder: Path
    name: str

    @property
    def model(self) -> Path:
        return self.folder / f"{self.name}.pth"

    @property
    def optimizer(self) -> Path:
        return self.folder / f"optimizer_{self.name}.pth"

    @property
    def train_state(self) -> Path:
        return self.folder / f"train_{self.name}.pth"


# ---------------------------------------------------------------------------- choosing, pruning


@dataclass(frozen=True)
class CheckpointFolder:
    """A run's ``checkpoints/`` folder: which file is best, latest, resumable; what to prune."""

    path: Path

    def file(self, base: str, kind: CheckpointKind, **fields: Any) -> Path:
        """The path of a checkpoint of this kind (``fields``: epoch, step, val_loss...)."""
        name = CheckpointName.template(base, kind).format(**fields)
        return self.path / f"{name}{CheckpointName.SUFFIX}"

    def files(self) -> list[tuple[Path, CheckpointName]]:
        """Every checkpoint landseg wrote in this run, with what its name says, sorted."""
        if not self.path.is_dir():
            return []
        found = []
        for path in sorted(self.path.glob(f"*{CheckpointName.SUFFIX}")):
            name = CheckpointName.parse(path)
            if name is not None:
                found.append((path, name))
        return found

    def best(self) -> Path | None:
        """The checkpoint with the lowest val_loss in its name; else ``last``; else any."""
        files = self.files()
        scored = [
            (
                name.value if name.value == name.value else float("inf"),
                -(name.epoch or 0),
                path,
            )
            for path, name in files
            if name.kind == "loss" and name.value is not None
        ]
        if scored:
            return min(scored)[2]
        last = [path for path, name in files if name.kind == "last"]
        paths = [path for path, _ in files] or sorted(self.path.glob(f"*{CheckpointName.SUFFIX}"))
        chosen = last or paths
        return chosen[-1] if chosen else None

    def resumable(self) -> list[Path]:
        """The ``last`` and step checkpoints: those a continued run may start from."""
        return [path for path, name in self.files() if name.resumable]

    def steps(self) -> list[Path]:
        return [path for path, name in self.files() if name.kind == "step"]

    def latest(self) -> Path | None:
        """The resumable checkpoint with the most training steps (then the newest file).

        A torn file (a crash mid-write) is skipped with a warning; a file refused as unsafe
        stops the search: a crafted file is never skipped past silently.
        """
        best: tuple[int, float, Path] | None = None
        for path in self.resumable():
            try:
                checkpoint = load_checkpoint(path)
            except UnsafeCheckpointError as error:
                raise LandsegError(str(error)) from error
            except Exception as error:
                log.warning("skipping unreadable checkpoint %s: %s", path, error)
                continue
            key = (int(checkpoint.get("global_step", 0)), path.stat().st_mtime, path)
            if best is None or key[:2] > best[:2]:
                best = key
        return best[2] if best else None

    def prune_after(self, resumed_from: Path | None) -> list[Path]:
        """Remove the checkpoints written after the one a run resumes from.

        They belong to the part of the run that is about to be trained again, and the restored
        top-k bookkeeping does not know them: kept, they would stay as stale "best" files, or
        make Lightning version the names of their recomputed twins (``-v1``).
        """
        if not self.path.is_dir():
            return []
        cutoff = resumed_from.stat().st_mtime_ns if resumed_from is not None else -1
        stale = [
            path
            for path in self.path.glob(f"*{CheckpointName.SUFFIX}")
            if path != resumed_from and path.stat().st_mtime_ns > cutoff
        ]
        for path in stale:
            log.info("removing %s, written after the checkpoint the run resumes from", path.name)
            path.unlink()
        return stale

    def keep_newest_step(self) -> list[Path]:
        """Drop older step checkpoints (Lightning never deletes the one a run resumed from);
        the files removed."""
        steps = sorted(self.steps(), key=lambda p: p.stat().st_mtime_ns)
        for path in steps[:-1]:
            path.unlink(missing_ok=True)
        return steps[:-1]


def best_of_fit(trainer: pl.Trainer) -> str | None:
    """The best val_loss checkpoint of a fit, as Lightning's top-k bookkeeping knows it (None
    with save_top_k 0: use ``last``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if (
            isinstance(callback, ModelCheckpoint)
            and callback.monitor == "val_loss"
            and callback.best_model_path
        ):
            return callback.best_model_path
    return None


# ---------------------------------------------------------------------------- loading, writing


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds Python objects that ``weights_only`` loading refuses."""


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data, never code.

    Raises FileNotFoundError, :class:`UnsafeCheckpointError` (a file that carries Python
    objects, e.g. a crafted pickle) or another exception for a torn or foreign file.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except torch.serialization.pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds Python objects that could run code "
            "(landseg loads checkpoints with weights_only=True)"
        ) from error


def checkpoint_error_line(path: str | os.PathLike[str], error: BaseException) -> str:
    """One line for a checkpoint that cannot be used."""
    if isinstance(error, UnsafeCheckpointError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{path}: checkpoint not found"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive since torch 1.6
        return (
            f"{path}: not a torch checkpoint file (empty, truncated, another kind of file, "
            "or saved by torch before 1.6)"
        )
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{path}: not a loadable landseg checkpoint ({reason})"


def save_checkpoint(data: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` whole or not at all: a temporary file beside ``path``, fsynced, renamed
    (Lightning's own writer stages in ``$TMPDIR``, whose move may be a copy a crash tears)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(data, tmp)


# ---------------------------------------------------------------------------- weights


class WeightsFileError(LandsegError):
    """A file that holds no network weights (unreadable, unsafe, or something else)."""


@dataclass(frozen=True)
class WeightsReport:
    """How a file's weights matched a module (or a part of it), key by key."""

    file: Path
    part: str | None
    missing: list[str] = field(default_factory=list)  # the module's, not in the file
    unexpected: list[str] = field(default_factory=list)  # the file's, not in the module
    #: (key, shape in the file, shape in the module)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    loaded: int = 0  # tensors loaded

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def detail(self) -> str:
        """What does not fit, with one example of each kind of difference."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} weights missing (e.g. {self.missing[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (e.g. {self.unexpected[0]})")
        if self.mismatched:
            key, there, here = self.mismatched[0]
            parts.append(
                f"{len(self.mismatched)} of another shape (e.g. {key} is {there} there, "
                f"{here} here)"
            )
        return ", ".join(parts) or "all weights fit"


class WeightsMismatchError(LandsegError):
    """The file's weights do not fit the module; ``report`` says how."""

    def __init__(self, report: WeightsReport):
        self.report = report
        where = f" ({report.part})" if report.part else ""
        super().__init__(
            f"{report.file}: its weights do not fit the model{where}: {report.detail()}"
        )


def network_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The network weights a file holds: a landseg ``.ckpt``'s network (its ``state_dict``
    under ``model.``, the prefix removed), or a plain state_dict (a ``.pth``).

    Raises :class:`WeightsFileError` with one line naming the file.
    """
    import torch

    path = Path(file)
    try:
        state = load_checkpoint(path)
    except Exception as error:
        raise WeightsFileError(checkpoint_error_line(path, error)) from error
    if isinstance(state, dict) and "state_dict" in state:
        weights = state["state_dict"]
        if not isinstance(weights, dict):
            raise WeightsFileError(f"{path}: not a landseg checkpoint (no state_dict)")
        return {
            key.removeprefix(NETWORK_PREFIX): value
            for key, value in weights.items()
            if key.startswith(NETWORK_PREFIX)
        }
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsFileError(f"{path}: not a network's weights (no state_dict of tensors)")
    return state


def compare_weights(
    own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], file: Path, part: str | None
) -> WeightsReport:
    """Which of ``own`` (a module's state_dict) ``given`` lacks, adds, or shapes otherwise."""
    return WeightsReport(
        file=file,
        part=part,
        missing=sorted(own.keys() - given.keys()),
        unexpected=sorted(given.keys() - own.keys()),
        mismatched=sorted(
            (key, tuple(given[key].shape), tuple(own[key].shape))
            for key in own.keys() & given.keys()
            if given[key].shape != own[key].shape
        ),
    )


def load_weights(
    module: torch.nn.Module,
    file: str | Path,
    part: str | None = None,
    *,
    allow_unexpected: bool = False,
) -> WeightsReport:
    """Load a file's network weights into ``module``, or into its submodule ``part``.

    ``part`` (e.g. ``"encoder"``) names a submodule of ``module``; the file may hold that part
    alone or a whole network (its weights under ``<part>.`` are taken). Every weight of the
    target must be in the file with its shape; weights the target does not have are refused
    too unless ``allow_unexpected`` (a whole network's file for one part, a checkpoint of a
    network with another head). Nothing is loaded unless all of them fit.

    Raises :class:`WeightsFileError` (no weights in the file) or
    :class:`WeightsMismatchError` (its ``report`` lists every key that does not fit); returns
    the report of a load.
    """
    path = Path(file)
    given = network_weights(path)
    target = module
    if part:
        try:
            target = module.get_submodule(part)
        except AttributeError as error:
            raise LandsegError(
                f"{path}: the model has no part {part!r} to load these weights into"
            ) from error
        prefix = f"{part}."
        inside = {k.removeprefix(prefix): v for k, v in given.items() if k.startswith(prefix)}
        given = inside or given
    report = compare_weights(target.state_dict(), given, path, part)
    if report.missing or report.mismatched or (report.unexpected and not allow_unexpected):
        raise WeightsMismatchError(report)
    own = target.state_dict()
    try:
        target.load_state_dict({key: given[key] for key in own}, strict=True)
    except RuntimeError as error:  # e.g. a dtype torch cannot copy
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise LandsegError(f"{path}: its weights do not fit the model ({reason})") from error
    report = WeightsReport(
        file=path,
        part=part,
        unexpected=report.unexpected,
        loaded=len(own),
    )
    log.info(
        "loaded %d weights%s from %s%s",
        report.loaded,
        f" into {part}" if part else "",
        path,
        f"; {len(report.unexpected)} in the file unused (e.g. {report.unexpected[0]})"
        if report.unexpected
        else "",
    )
    return report


# ---------------------------------------------------------------------------- weights files

#: The dicts that hold a network's weights inside a checkpoint, in the order they are looked
#: for: Lightning's and timm's training checkpoints (``state_dict``), other trainers' (``model``),
#: timm's exponential moving average (``state_dict_ema``).
WEIGHTS_CONTAINERS = ("state_dict", "model", "state_dict_ema")


@dataclass(frozen=True)
class WeightsFile:
    """The tensors of a weights file, where they were found in it, and what identifies it.

    ``metadata``: a ``.safetensors`` file's string metadata (``band_names``, ``mean``...),
    empty for a PyTorch file; ``container``: the checkpoint key that held the tensors
    (``state_dict``...), None for a bare state dict.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    container: str | None = None

    def record(self) -> dict[str, Any]:
        """The file's name, size and SHA-256 (for run.json and the exports' metadata)."""
        import hashlib

        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {
            "file": self.path.name,
            "path": str(self.path),
            "size": self.path.stat().st_size,
            "sha256": digest.hexdigest(),
        }


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: a little-endian header length, then its JSON header."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_weights_file(file: str | Path) -> WeightsFile:
    """The tensors of a weights file: a ``.safetensors`` file (with its metadata), or a
    PyTorch file read ``weights_only`` (:func:`load_checkpoint`): a bare state dict, or a
    checkpoint holding one under :data:`WEIGHTS_CONTAINERS` (Lightning, landseg, timm).

    Keys are returned as the file has them (prefixes included): matching them to a network
    is the caller's. Raises :class:`WeightsFileError` with one line naming the file: missing,
    not a weights file (a text file...), a pickle that would run code, no tensors.
    """
    import torch

    path = Path(file)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such weights file")
    if _is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            raise WeightsFileError(f"{path}: not a readable safetensors file ({reason})") from error
        if not tensors:
            raise WeightsFileError(f"{path}: holds no tensors")
        return WeightsFile(path, tensors, metadata)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive since torch 1.6
        raise WeightsFileError(
            f"{path}: not a weights file (neither a PyTorch file saved by torch >= 1.6 nor "
            "safetensors: empty, truncated, text, or another kind of file)"
        )
    try:
        state = load_checkpoint(path)
    except Exception as error:
        raise WeightsFileError(checkpoint_error_line(path, error)) from error
    container = None
    if isinstance(state, dict):
        for key in WEIGHTS_CONTAINERS:
            if isinstance(state.get(key), dict):
                container, state = key, state[key]
                break
    tensors = (
        {str(k): v for k, v in state.items() if torch.is_tensor(v)}
        if isinstance(state, dict)
        else {}
    )
    if not tensors:
        raise WeightsFileError(f"{path}: holds no tensors (not a network's weights)")
    return WeightsFile(path, tensors, {}, container)
