"""Atomic file writes: every file landseg writes appears whole or not at all.

A temporary file is written in the destination's folder, flushed to disk, then renamed over
the destination (``os.replace`` is atomic on POSIX), so a crash mid-write never leaves a
truncated history, config or raster behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@functools.cache
def new_file_mode() -> int:
    """The mode ``open()`` gives a new file, 0o666 less the umask (read once: setting the
    umask is the only way to read it). ``mkstemp`` makes its files 0o600, which renamed into
    place would keep every checkpoint, prediction and run.json from the user's group."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_path(destination: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``destination``: the one naming of
    landseg's temporary files, which a continued run finds and removes when a kill left one.
    It has the mode a file created with ``open()`` would have."""
    fd, name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it over on success.

    The caller writes the temporary file by any means (numpy, rasterio, torch.save). On error
    the temporary file is removed and ``destination`` is left untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(destination)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, new_file_mode())  # a writer may have made the file again
        os.replace(tmp, destination)
        _fsync_dir(destination.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` could not be made (a file in its way, a parent landseg may not write
    in), or None; creates nothing, so ``landseg validate`` can ask too."""
    path = Path(folder)
    if path.is_dir():
        return None
    while not path.exists():  # also False below a file (ENOTDIR): the file is found next
        if path.parent == path:
            return None
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if path != Path(folder) and not os.access(path, os.W_OK | os.X_OK):
        return f"{path}: permission denied"
    return None


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed writers left under ``folder``; return them.

    Only for a folder no live process writes to (a run about to resume): the files are those
    :func:`atomic_path` names, ``.<destination name>.<random>.tmp``.
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(destination: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(destination: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(destination, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # torch tensors
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def atomic_write_json(destination: str | os.PathLike[str], data: Any, *, indent: int = 2) -> None:
    text = json.dumps(data, indent=indent, default=_json_default, allow_nan=True)
    atomic_write_text(destination, text + "\n")


def write_geotiff(
    destination: str | os.PathLike[str],
    array: np.ndarray,
    *,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    colormap: dict[int, tuple[int, ...]] | None = None,
    compress: str | None = "deflate",
) -> None:
    """Write a (bands, height, width) or (height, width) array as a GeoTIFF, atomically."""
    import rasterio

    data = array[np.newaxis] if array.ndim == 2 else array
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name if data.dtype != np.bool_ else "uint8",
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = compress
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    with atomic_path(destination) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        if colormap is not None:
            dst.write_colormap(1, colormap)
