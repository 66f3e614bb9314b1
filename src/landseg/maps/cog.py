"""Cloud-Optimised GeoTIFFs written a strip of rows at a time, in flat memory.

GDAL's COG driver only copies a finished raster, so a prediction is written in three steps,
all in the destination's folder:

1. a *staging* GeoTIFF (tiled, fast compression), ``.<name>.<random>.tmp``, written a strip
   of rows at a time; rows are buffered up to whole rows of tiles, so each tile is written
   (and compressed) once;
2. the COG, copied from it by GDAL's COG driver onto a second temporary name (which also
   builds the internal overviews, through GDAL's ``<that name>.ovr.tmp``): tiled, compressed,
   overviews down to one tile, ``LAYOUT=COG``;
3. an atomic rename onto the final name (:func:`landseg.core.files.atomic_path`: fsync, rename).

GDAL's block cache is bounded (``GDAL_CACHEMAX``) throughout, so memory stays flat whatever
the raster's size. Every temporary file is removed, on success and on error alike; those a
killed process leaves are named ``.<name>.*.tmp``, which a resumed run clears
(:func:`landseg.core.files.remove_stale_temporaries`).

Layout choices (see :func:`cog_layout`): DEFLATE, readable by every GeoTIFF reader (ZSTD
would be as small but not every GIS reads it; a caller may ask for it where GDAL has it);
the horizontal-difference predictor (2) for smooth integer values (uint8 probabilities: half
the size) but none for class maps and bits (it makes them larger); the floating-point
predictor (3) for float32. Overviews are resampled NEAREST for categorical rasters (an
overview pixel is one of the classes, never an average of class indices) and AVERAGE for
probabilities; the band's nodata is set, so averaging leaves nodata pixels out, and an
overview pixel whose pixels are all nodata is nodata.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from landseg.core.files import atomic_path, temporary_path

#: Tile size of the staging file and the COG (GDAL needs multiples of 16).
BLOCK = 256
#: GDAL's block cache while writing, in MB: memory stays flat whatever the raster's size.
CACHE_MB = 128

Resampling = Literal["nearest", "average"]
_PREDICTORS = {1: "NO", 2: "STANDARD", 3: "FLOATING_POINT"}


@dataclass(frozen=True)
class CogLayout:
    """How a COG is stored: overview resampling, TIFF predictor (1: none), codec, tile size."""

    resampling: Resampling = "nearest"
    predictor: Literal[1, 2, 3] = 1
    compression: Literal["deflate", "zstd"] = "deflate"
    block: int = BLOCK

    def creation_options(self) -> dict[str, str]:
        """The options of GDAL's COG driver for this layout."""
        compression = self.compression.upper()
        if compression == "ZSTD" and not has_codec("zstd"):
            compression = "DEFLATE"
        return {
            "COMPRESS": compression,
            "PREDICTOR": _PREDICTORS[self.predictor],
            "BLOCKSIZE": str(self.block),
            "OVERVIEW_RESAMPLING": self.resampling.upper(),
            "BIGTIFF": "IF_SAFER",
        }


def cog_layout(dtype: str, categorical: bool) -> CogLayout:
    """The layout of a raster of ``dtype``: categorical (classes, bits) or continuous values."""
    if categorical:
        return CogLayout("nearest", 1)
    return CogLayout("average", 3 if np.dtype(dtype).kind == "f" else 2)


@functools.cache
def has_codec(name: str) -> bool:
    """Whether this GDAL build writes GeoTIFFs compressed with ``name`` (e.g. ``zstd``)."""
    from rasterio.io import MemoryFile

    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 1, "dtype": "uint8"}
    try:
        with warnings.catch_warnings(), rasterio.Env(CPL_LOG="/dev/null"), MemoryFile() as memory:
            warnings.simplefilter("ignore")
            with memory.open(**profile, compress=name):
                pass
            with memory.open() as src:
                return src.compression is not None and src.compression.value == name.upper()
    except Exception:
        return False


def _content_keys(profile: dict[str, Any]) -> dict[str, Any]:
    """``profile`` without its storage keys (driver, tiling, compression): those are this
    module's to choose."""
    return {
        key: value
        for key, value in profile.items()
        if key.lower()
        not in {"driver", "tiled", "blockxsize", "blockysize", "compress", "bigtiff", "predictor"}
        and not key.lower().startswith(("zlevel", "zstd_level"))
    }


def _staging_options(block: int) -> dict[str, Any]:
    """Tiled, quickly compressed: the staging file is read once, by GDAL. Sparse: a block
    that is nodata everywhere (a scene's empty margins, an all-nodata scene) is not written
    and reads back as nodata, so it costs no compression and no bytes; nor does GDAL fill
    the blocks not yet written when a resumable staging file is closed at a checkpoint. The
    COG copied from it is the same, byte for byte (the COG driver writes every block)."""
    fast: dict[str, Any] = (
        {"compress": "zstd", "zstd_level": 1}
        if has_codec("zstd")
        else {"compress": "deflate", "zlevel": 1}
    )
    return {
        "driver": "GTiff",
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "BIGTIFF": "IF_SAFER",
        "SPARSE_OK": "TRUE",
        **fast,
    }


class CogWriter:
    """The staging raster of :func:`cog_writer`: write rows with :meth:`write_rows`.

    ``dataset`` is the open rasterio dataset, for tags, colour tables and band descriptions
    (the COG driver copies them).
    """

    def __init__(self, dataset: Any, block: int) -> None:
        self.dataset = dataset
        self.block = block
        self._start = 0  # first row held in the buffer
        self._parts: list[np.ndarray] = []
        self._rows = 0  # rows held

    def write_rows(self, first: int, data: np.ndarray) -> None:
        """Write ``data`` ``(bands, rows, width)`` from row ``first``, strips top to bottom.

        Rows are held (copied) until a whole row of tiles is complete: at most one tile's
        height more than a strip. A strip that does not follow the previous one is written as
        it is.
        """
        if data.ndim == 2:
            data = data[np.newaxis]
        if first != self._start + self._rows:
            self.flush()
            self._write(first, data)
            self._start = first + data.shape[1]
            return
        self._parts.append(np.array(data, copy=True))  # the caller may reuse its array
        self._rows += data.shape[1]
        end = (self._start + self._rows) // self.block * self.block
        if end > self._start:
            held = np.concatenate(self._parts, axis=1) if len(self._parts) > 1 else self._parts[0]
            cut = end - self._start
            self._write(self._start, held[:, :cut])
            rest = held[:, cut:].copy()  # not a view that keeps all of ``held`` alive
            self._parts = [rest] if rest.shape[1] else []
            self._start, self._rows = end, rest.shape[1]

    def flush(self) -> None:
        """Write the rows held (the last, partial row of tiles)."""
        if self._parts:
            held = np.concatenate(self._parts, axis=1) if len(self._parts) > 1 else self._parts[0]
            self._write(self._start, held)
        self._start += self._rows
        self._parts, self._rows = [], 0

    def _write(self, first: int, data: np.ndarray) -> None:
        window = Window(0, first, self.dataset.width, data.shape[1])
        self.dataset.write(data, window=window)


@contextlib.contextmanager
def _staging(destination: Path) -> Iterator[Path]:
    """A temporary path beside ``destination``, removed (with GDAL's side files) on exit."""
    path = temporary_path(destination)
    try:
        yield path
    finally:
        for leftover in (path, Path(f"{path}.aux.xml"), Path(f"{path}.ovr")):
            leftover.unlink(missing_ok=True)


def copy_as_cog(staging: Path, destination: Path, layout: CogLayout) -> None:
    """GDAL's COG driver copies ``staging`` (with its overviews) onto ``destination``,
    through a temporary name renamed once synced; GDAL's side files are removed."""
    with atomic_path(destination) as final:
        try:
            rasterio.shutil.copy(staging, final, driver="COG", **layout.creation_options())
        finally:
            for leftover in (Path(f"{final}.ovr.tmp"), Path(f"{final}.aux.xml")):
                leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def cog_writer(
    destination: str | os.PathLike[str],
    profile: dict[str, Any],
    layout: CogLayout | None = None,
    cache_mb: int = CACHE_MB,
) -> Iterator[CogWriter]:
    """Write a raster a strip of rows at a time; on exit it is ``destination``, a COG.

    ``profile`` gives the raster's content (width, height, count, dtype, nodata, crs,
    transform, photometric...); storage keys (driver, tiling, compression) are this module's.
    Inside the block, write with :meth:`CogWriter.write_rows` and describe the raster through
    ``writer.dataset``. On error nothing is left: no temporary file, ``destination`` untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    layout = layout or CogLayout()
    content = _content_keys(profile)
    with rasterio.Env(GDAL_CACHEMAX=cache_mb), _staging(destination) as staging:
        with rasterio.open(staging, "w", **content, **_staging_options(layout.block)) as dataset:
            writer = CogWriter(dataset, layout.block)
            yield writer
            writer.flush()
        copy_as_cog(staging, destination, layout)


#: Rows per block of a resumable staging file: its progress is kept a block row at a time, so
#: the finer, the less a killed prediction recomputes (GDAL needs multiples of 16).
RESUME_BLOCK_ROWS = 16


class ResumableWriter(CogWriter):
    """The staging raster of :func:`resumable_cog_writer`: :meth:`write_rows` as
    :class:`CogWriter`'s, from row ``rows_done`` on, and :meth:`checkpoint` after each strip.

    ``durable`` is the number of rows on disk in a closed, consistent file: rows are written in
    whole block rows, the file is closed (GDAL writes its directory), synced, and only then
    ``record(rows)`` is called. A block that holds a row already recorded is never written again,
    so a kill (even mid-write) leaves every recorded row as it was.
    """

    def __init__(
        self,
        staging: Path,
        block: int,
        rows_done: int,
        record: Any,
        open_dataset: Any,
        first_row: int = 0,
    ) -> None:
        self.staging = staging
        self.durable = rows_done
        self._record = record
        self._open = open_dataset
        # nothing recorded past its first row: the file is made anew (a stale one replaced)
        super().__init__(open_dataset("r+" if rows_done > first_row else "w"), block)
        self._start = rows_done

    def checkpoint(self) -> None:
        """Make the rows written so far durable and record them (nothing when none is new)."""
        if self._start <= self.durable:
            return
        self.dataset.close()
        with open(self.staging, "rb") as handle:
            os.fsync(handle.fileno())
        self.durable = self._start
        self._record(self.durable)
        self.dataset = self._open("r+")

    def finish(self) -> None:
        """Write the last, partial block row (once every strip is in)."""
        self.flush()


@contextlib.contextmanager
def resumable_cog_writer(
    destination: str | os.PathLike[str] | None,
    staging: Path,
    profile: dict[str, Any],
    layout: CogLayout | None = None,
    rows_done: int = 0,
    record: Any = None,
    cache_mb: int = CACHE_MB,
    first_row: int = 0,
) -> Iterator[ResumableWriter]:
    """:func:`cog_writer` whose staging file ``staging`` outlives a kill: written from row
    ``rows_done`` (``first_row``: created anew), ``record(rows)`` called after each block row
    of rows is on disk; on exit, the COG is copied onto ``destination`` (atomically). On error
    the staging file is kept as it is: its recorded rows are intact, and a later call
    continues them.

    ``destination`` None: the staging file is the product, rows ``first_row`` on of a raster
    cut among processes (its other rows sparse, never written); whoever holds every piece
    copies them into the COG (:func:`landseg.inference.scene.assemble_scene`).

    Its blocks are ``layout.block`` wide and :data:`RESUME_BLOCK_ROWS` high, so progress is
    kept every few rows; the COG is copied with ``layout``'s own tiles, so its bytes do not
    depend on where a kill fell.
    """
    if destination is not None:
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    layout = layout or CogLayout()
    content = _content_keys(profile)
    options = {**_staging_options(layout.block), "blockysize": RESUME_BLOCK_ROWS}

    def open_dataset(mode: str) -> Any:
        if mode == "w":
            return rasterio.open(staging, "w", **content, **options)
        return rasterio.open(staging, "r+", SPARSE_OK=True)  # (GDAL's update mode is not)

    with rasterio.Env(GDAL_CACHEMAX=cache_mb):
        writer = ResumableWriter(
            staging,
            RESUME_BLOCK_ROWS,
            rows_done,
            record or (lambda rows: None),
            open_dataset,
            first_row,
        )
        try:
            yield writer
            writer.finish()
            if destination is None:  # a piece: its last rows recorded too (it is the product)
                writer.checkpoint()
        finally:
            writer.dataset.close()
        if destination is not None:
            copy_as_cog(staging, destination, layout)
