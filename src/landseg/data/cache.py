"""Decoded tiles kept after their first read (``data_source.cache``), so later epochs skip decoding.

Decoding is most of what a sample costs (JPEG-in-GeoTIFF tiles: 8.4 of the 9.4 ms of a Dubai
tile), and every epoch decodes the same tiles again. A cache keeps what
:meth:`~landseg.data.dataset.SegmentationDataset.decode` returns: the image in the raster's
dtype (nodata pixels already 0) and the class mask, *before* scaling, augmentation and
standardisation. Those three still run on every read, so augmentations differ per epoch and a
run with a cache is bit-identical to a run without one.

``none``
    decode every read.
``disk`` (the default)
    one small file per tile under ``data_source.cache_dir`` (default
    ``<output_folder>/.landseg-cache``), shared by every run of the output folder, the tasks of
    a cross-validation job, every DataLoader worker and DDP rank, and a continued run. Reads
    go through the page cache (``read(2)`` into the sample's own arrays), so they cost no
    process memory beyond the sample, however many tiles there are, and the kernel evicts the
    pages under memory pressure. Bounded by ``data_source.cache_limit_gb`` and by the disk: a
    tile is not added once the folder would exceed the limit or the disk would have less than
    :data:`MIN_FREE_SHARE` free; tiles left out are decoded every time. Deleting the folder is
    always safe, even during a run.
``memory``
    the train and val tiles of one training process in RAM (an anonymous memory file created
    before the DataLoader workers start, so the workers of every epoch share it and it survives
    their end). Refused, before the first batch, when it would not fit in ``cache_limit_gb``
    and half the memory available.

Disk entries (``<cache_dir>/v1/<2 hex>/<62 hex>.tile``; the name is a hash of the image and
mask paths and the settings that change decoding: bands, classes, ignore_index):

* bytes 0-7 :data:`MAGIC`; 8-511 a JSON header padded with spaces: the image's and the mask's
  ``[size, mtime_ns, inode]`` when the tile was decoded, dtype and shape of both arrays, and
  the CRC-32 of the payload; then the image bytes and the mask bytes (C order).
* an entry is used only when its sources' size, mtime and inode are those of the files now,
  its length is exact and its CRC matches; anything else is a miss, decoded and rewritten. An
  edited or replaced raster is therefore decoded again, and a torn or foreign file (a power
  cut, a partial copy) is never returned.
* an entry is written to a temporary file beside it (:func:`landseg.core.files.temporary_path`) and
  renamed over: a kill at any moment leaves either no entry or a whole one, and two processes
  writing the same tile (ranks, workers, cv tasks) each rename a whole file. No lock guards
  entries; a reader opens whichever whole file is there. Entries are not fsynced: the CRC
  catches what a power cut could tear, and the first epoch stays fast.
* the bytes in use are counted in ``<cache_dir>/usage`` under an ``fcntl.flock`` that every
  process takes on its own open of the file (a lock held through a descriptor inherited
  across fork would be shared with the workers). The kernel drops the lock when a process
  dies, so a kill never blocks the others; the count is recomputed from the files whenever
  a training process sets the cache up.

The memory cache is one anonymous file (``memfd_create``; elsewhere an unlinked temporary
file): a byte per row saying "filled", then the rows. A process writes a row's bytes with
``pwrite`` and then its flag; readers ``pread`` the flag and then the row. System calls on one
file are ordered by the kernel, so a set flag always means a whole row, on any CPU; a worker
killed between the two leaves the flag unset and the row is decoded again. The file is freed by
the kernel when the last process holding it ends, a kill included.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import DTypeLike

from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError
from landseg.core.files import atomic_write_text, temporary_path
from landseg.data.csvfiles import SamplePair
from landseg.data.summary import DataSummary

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no flock, no pread; no cache there)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: A decoded tile: the image (C, H, W) in the raster's dtype and the int64 class mask (H, W).
Decoded = tuple[np.ndarray, np.ndarray]
#: The shape and dtype of an array of a memory cache's rows.
Layout = tuple[Sequence[int], DTypeLike]

#: The folder of the disk cache inside the output folder when ``cache_dir`` is not set; a dot
#: folder, so ``landseg runs`` does not walk it.
DEFAULT_FOLDER = ".landseg-cache"
#: The disk entry format; a new one goes to a new ``v<N>`` folder beside the old one.
FORMAT = 1
MAGIC = b"LSGTILE1"
HEADER_SIZE = 512
ENTRY_SUFFIX = ".tile"
USAGE_FILE = "usage"
#: A tile is not added when the disk holding the cache would keep less than this share free.
MIN_FREE_SHARE = 0.10
#: Temporary entries older than this are left by killed writers, and removed at setup.
STALE_SECONDS = 3600.0
#: The splits the memory cache holds: those read every epoch (test is read once or twice).
MEMORY_SPLITS = ("train", "val")
#: The share of the memory available at setup that the memory cache may take.
MEMORY_SHARE = 0.5
GB = 1e9


class TileCache(Protocol):
    """What :class:`~landseg.data.dataset.SegmentationDataset` asks of a cache."""

    def fetch(self, index: int, pair: SamplePair, decode: Callable[[], Decoded]) -> Decoded:
        """Row ``index`` (``pair``) decoded: from the cache, or by ``decode()`` and then kept."""
        ...


def human_size(size: float) -> str:
    """Bytes in decimal units, as ``cache_limit_gb`` counts them: 24.6 kB, 3.40 MB, 1.23 GB."""
    for unit, scale in (("GB", GB), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size / 1e3:.1f} kB"


def mask_dtype(n_classes: int) -> np.dtype:
    """The smallest signed integer type for class indices and IGNORE_INDEX (-1)."""
    for kind in (np.int8, np.int16, np.int32):
        if n_classes <= np.iinfo(kind).max:
            return np.dtype(kind)
    return np.dtype(np.int64)


# --------------------------------------------------------------------------- disk


def _signature(path: Path) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _bytes(array: np.ndarray) -> memoryview:
    return np.ascontiguousarray(array).data.cast("B")


class DiskCache:
    """Decoded tiles as files under ``folder``, shared by every process (module docstring)."""

    def __init__(self, folder: Path, limit_bytes: int, settings: Mapping[str, Any], n_classes: int):
        self.folder = Path(folder)
        self.entries = self.folder / f"v{FORMAT}"
        self.limit_bytes = int(limit_bytes)
        self.settings = json.dumps(dict(settings), sort_keys=True)
        self.mask_dtype = mask_dtype(n_classes)
        #: Why this process adds no more entries (limit, full disk, unwritable folder), or None.
        self.stopped: str | None = None

    # ------------------------------------------------------------------ setup

    def setup(self) -> int:
        """Create the folder, drop killed writers' leftovers, recount the bytes; return them.

        Called once per training process, before its DataLoader workers start.
        """
        self.entries.mkdir(parents=True, exist_ok=True)
        readme = self.folder / "README.txt"
        if not readme.exists():
            atomic_write_text(readme, README)
        with self._usage_locked() as fd:
            used = self._recount()
            _write_usage(fd, used)
        return used

    def _recount(self) -> int:
        used, now = 0, time.time()
        for shard in _scandir(self.entries):
            for entry in _scandir(Path(shard.path)):
                try:
                    stat = entry.stat(follow_symlinks=False)
                    if entry.name.endswith(ENTRY_SUFFIX):
                        used += stat.st_size
                    elif entry.name.endswith(".tmp") and now - stat.st_mtime > STALE_SECONDS:
                        os.unlink(entry.path)
                    elif entry.name.endswith(".tmp"):  # a live writer's, counted as it stands
                        used += stat.st_size
                except FileNotFoundError:  # replaced or removed meanwhile
                    continue
        return used

    def _usage_locked(self) -> _Locked:
        return _Locked(self.folder / USAGE_FILE)

    # ------------------------------------------------------------------ reading

    def path(self, pair: SamplePair) -> Path:
        """The entry of ``pair`` under the current settings."""
        text = f"{self.settings}\n{pair.cache_text()}"
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.entries / key[:2] / f"{key[2:]}{ENTRY_SUFFIX}"

    def fetch(self, index: int, pair: SamplePair, decode: Callable[[], Decoded]) -> Decoded:
        path = self.path(pair)
        try:  # stat before decoding: a file changed meanwhile reads as changed next time
            sources = [_signature(path) for path in pair.sources()]
        except OSError:
            return decode()  # which names the missing file
        hit = self.read(path, sources)
        if hit is not None:
            return hit
        image, mask = decode()
        if self.stopped is None:
            self.write(path, sources, image, mask)
        return image, mask

    def read(self, path: Path, sources: list[list[int]]) -> Decoded | None:
        """The entry at ``path`` if it is whole and was decoded from ``sources``, else None."""
        try:
            with open(path, "rb", buffering=0) as handle:
                head = handle.read(HEADER_SIZE)
                if len(head) != HEADER_SIZE or head[: len(MAGIC)] != MAGIC:
                    return None
                header = json.loads(head[len(MAGIC) :])
                if header.get("sources") != sources:
                    return None
                image_spec, mask_spec = _spec(header["image"]), _spec(header["mask"])
                size = HEADER_SIZE + _nbytes(image_spec) + _nbytes(mask_spec)
                if os.fstat(handle.fileno()).st_size != size:  # before allocating anything
                    return None
                image, mask = np.empty(*image_spec), np.empty(*mask_spec)
                if not (_read_into(handle, image) and _read_into(handle, mask)):
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, unreadable or foreign: decode it again
        if zlib.crc32(_bytes(mask), zlib.crc32(_bytes(image))) != header.get("crc32"):
            return None
        return image, mask.astype(np.int64)

    # ------------------------------------------------------------------ writing

    def write(
        self, path: Path, sources: list[list[int]], image: np.ndarray, mask: np.ndarray
    ) -> bool:
        """Add or replace an entry, within the limit; False (and stop adding) when it cannot."""
        image = np.ascontiguousarray(image)
        stored = np.ascontiguousarray(mask, dtype=self.mask_dtype)
        header = {
            "sources": sources,
            "image": [image.dtype.str, list(image.shape)],
            "mask": [stored.dtype.str, list(stored.shape)],
            "crc32": zlib.crc32(_bytes(stored), zlib.crc32(_bytes(image))),
        }
        head = MAGIC + json.dumps(header).encode("utf-8")
        if len(head) > HEADER_SIZE:  # a shape of many dimensions: not worth a format
            return False
        size = HEADER_SIZE + image.nbytes + stored.nbytes
        if not self._reserve(path, size):
            return False
        tmp: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_path(path)
            with open(tmp, "wb") as handle:
                handle.write(head.ljust(HEADER_SIZE, b" "))
                handle.write(_bytes(image))
                handle.write(_bytes(stored))
            os.replace(tmp, path)
        except OSError as error:  # disk full, folder deleted, read-only: stop, do not fail
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            self._stop(f"cannot write {path} ({error.strerror or error})")
            return False
        return True

    def _reserve(self, path: Path, size: int) -> bool:
        """Count ``size`` more bytes (less the entry it replaces) if the limits allow it."""
        try:
            with self._usage_locked() as fd:
                used = _read_usage(fd)
                try:
                    replaced = os.stat(path).st_size
                except FileNotFoundError:
                    replaced = 0
                after = used - replaced + size
                if after > self.limit_bytes:
                    self._stop(
                        f"{self.folder} holds {human_size(used)}, the limit "
                        f"(data_source.cache_limit_gb) is {human_size(self.limit_bytes)}; the "
                        "tiles left out are decoded every time"
                    )
                    return False
                disk = os.statvfs(self.folder)
                if disk.f_bavail * disk.f_frsize - size < MIN_FREE_SHARE * (
                    disk.f_blocks * disk.f_frsize
                ):
                    self._stop(
                        f"the disk of {self.folder} has less than {MIN_FREE_SHARE:.0%} free; "
                        "the tiles left out are decoded every time"
                    )
                    return False
                _write_usage(fd, after)
                return True
        except OSError as error:
            self._stop(f"cannot update {self.folder / USAGE_FILE} ({error.strerror or error})")
            return False

    def _stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
            log.info("data cache: no more tiles added: %s", reason)


class _Locked:
    """``with _Locked(path) as fd``: the file opened by this process, under an exclusive flock."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the only descriptor of this open releases the lock


def _read_usage(fd: int) -> int:
    try:
        return max(0, int(os.pread(fd, 64, 0).decode("ascii").strip() or 0))
    except ValueError:
        return 0  # garbage: the next setup recounts


def _write_usage(fd: int, used: int) -> None:
    # fixed width, one pwrite: a kill leaves the old number or the new one
    os.pwrite(fd, f"{used:>20d}\n".encode("ascii"), 0)


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _spec(spec: Any) -> tuple[list[int], np.dtype]:
    """(shape, dtype) of an array as a header records it (``[dtype.str, shape]``)."""
    dtype, shape = spec
    dims = [int(n) for n in shape]
    if any(n < 0 for n in dims):
        raise ValueError(f"negative shape {dims}")
    return dims, np.dtype(str(dtype))


def _read_into(handle: Any, array: np.ndarray) -> bool:
    view, done = _bytes(array), 0
    while done < len(view):
        count = handle.readinto(view[done:])
        if not count:
            return False
        done += count
    return True


README = """\
landseg's cache of decoded tiles (data_source.cache: disk).

Each .tile file holds one image/mask pair as landseg decoded it, so that training reads it
instead of decoding the rasters again. An entry is used only while its rasters keep the size,
modification time and inode they had when it was written.

Deleting this folder is always safe, even while a run trains: the tiles are decoded again.
Its size is bounded by data_source.cache_limit_gb; data_source.cache: none turns it off.
"""


# --------------------------------------------------------------------------- memory


class MemoryCache:
    """The decoded rows of one dataset in an anonymous memory file (module docstring)."""

    FILLED = b"\x01"

    def __init__(self, rows: int, image: Layout, mask: Layout, fd: int | None = None):
        self.rows = rows
        self.image_shape, self.image_dtype = tuple(image[0]), np.dtype(image[1])
        self.mask_shape, self.mask_dtype = tuple(mask[0]), np.dtype(mask[1])
        self.image_bytes = _nbytes(image)
        self.row_bytes = self.image_bytes + _nbytes(mask)
        self.offset = -(-rows // 4096) * 4096  # the flags, then page-aligned rows
        if fd is None:
            fd = _anonymous_file("landseg-cache")
            os.ftruncate(fd, self.size)  # sparse: memory is taken as rows are filled
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)

    @property
    def size(self) -> int:
        return self.offset + self.rows * self.row_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        # a spawned worker receives a duplicate of the descriptor (forked ones inherit it)
        from multiprocessing.reduction import DupFd

        image = (self.image_shape, self.image_dtype.str)
        mask = (self.mask_shape, self.mask_dtype.str)
        return (_attach, (self.rows, image, mask, DupFd(self.fd)))

    def filled(self) -> int:
        """How many rows are filled."""
        flags = os.pread(self.fd, self.rows, 0)
        return flags.count(self.FILLED)

    def fetch(self, index: int, pair: SamplePair, decode: Callable[[], Decoded]) -> Decoded:
        start = self.offset + index * self.row_bytes
        if os.pread(self.fd, 1, index) == self.FILLED:
            image = np.empty(self.image_shape, self.image_dtype)
            mask = np.empty(self.mask_shape, self.mask_dtype)
            _pread_into(self.fd, image, start)
            _pread_into(self.fd, mask, start + self.image_bytes)
            return image, mask.astype(np.int64)
        image, mask = decode()
        if image.shape == self.image_shape and image.dtype == self.image_dtype:
            try:
                _pwrite(self.fd, _bytes(image), start)
                _pwrite(self.fd, _bytes(mask.astype(self.mask_dtype)), start + self.image_bytes)
                os.pwrite(self.fd, self.FILLED, index)  # after the row: a set flag means all
            except OSError as error:  # memory ran short after all: this row stays unfilled
                log.warning("data cache: row %d not kept in memory (%s)", index, error)
        return image, mask


def _nbytes(layout: Layout) -> int:
    return int(np.prod(layout[0])) * np.dtype(layout[1]).itemsize


def _attach(rows: int, image: Layout, mask: Layout, descriptor: Any) -> MemoryCache:
    return MemoryCache(rows, image, mask, fd=descriptor.detach())


def _anonymous_file(name: str) -> int:
    """A file in memory that the kernel frees when its last descriptor closes."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, os.MFD_CLOEXEC)
    with tempfile.TemporaryFile(prefix=f"{name}-") as handle:  # unlinked already
        return os.dup(handle.fileno())


def _pread_into(fd: int, array: np.ndarray, offset: int) -> None:
    view, done = _bytes(array), 0
    while done < len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(fd, [view[done:]], offset + done)
        else:  # pragma: no cover (platforms without preadv)
            data = os.pread(fd, len(view) - done, offset + done)
            view[done : done + len(data)] = data
            count = len(data)
        if count <= 0:
            raise OSError(errno.EIO, "short read from the memory cache")
        done += count


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def available_memory() -> int | None:
    """Bytes of memory available now: MemAvailable, within the cgroup's limit; None unknown."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(max(0, int(limit) - int(current)))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


# --------------------------------------------------------------------------- setup


def cache_folder(config: LandsegConfig) -> Path:
    """Where the disk cache of this config lives."""
    source = config.data_source
    return source.cache_dir or config.output_setup.output_folder / DEFAULT_FOLDER


def build_caches(
    config: LandsegConfig, summary: DataSummary, sizes: Mapping[str, int]
) -> dict[str, TileCache]:
    """The cache of each split (``sizes``: rows per split), set up in the training process.

    Raises ConfigError when a memory cache does not fit. A disk cache that cannot be set up
    (an unwritable folder) is left out with a warning: training goes on, decoding every tile.
    """
    source = config.data_source
    limit = int(source.cache_limit_gb * GB)
    if source.cache != "none" and (fcntl is None or not hasattr(os, "pwrite")):
        log.warning("data cache: off, this platform has no fcntl.flock or os.pwrite")
        return {}
    if source.cache == "memory" and summary.image_dtype == "mixed":
        log.warning(
            "data cache: off, the memory cache holds images of one dtype and these have "
            "several; use cache: disk"
        )
        return {}
    if source.cache == "memory":
        return _memory_caches(config, summary, sizes, limit)
    if source.cache != "disk":
        return {}
    folder = cache_folder(config)
    if source.cache_dir is None and not config.output_setup.output_folder.is_dir():
        return {}  # not training (a report on another machine): leave no folder behind
    settings: dict[str, Any] = {
        "image_bands": source.image_bands,
        "mask_bands": source.mask_bands,
        "n_classes": summary.n_classes,
        "ignore_index": source.ignore_index,
    }
    if source.windows is not None:  # scene windows: how labels are burnt changes the masks
        settings["labels"] = [
            source.label_field,
            source.label_layer,
            source.label_background,
            source.label_all_touched,
            list(summary.class_labels),
        ]
    cache = DiskCache(folder, limit, settings, summary.n_classes)
    try:
        used = cache.setup()
    except OSError as error:
        log.warning("data cache: off, cannot set up %s (%s)", folder, error.strerror or error)
        return {}
    log.info(
        "data cache: disk, %s (%s used, limit %s); deleting it is safe",
        folder,
        human_size(used),
        human_size(limit),
    )
    return dict.fromkeys(sizes, cache)


def memory_row_layout(summary: DataSummary) -> tuple[Layout, Layout]:
    """(shape, dtype) of a decoded image and of a stored mask, as the data checks found them."""
    height, width = summary.patch_size
    image = ((summary.n_image_bands, height, width), np.dtype(summary.image_dtype))
    return image, ((height, width), mask_dtype(summary.n_classes))


def _memory_caches(
    config: LandsegConfig, summary: DataSummary, sizes: Mapping[str, int], limit: int
) -> dict[str, TileCache]:
    image, mask = memory_row_layout(summary)
    row = _nbytes(image) + _nbytes(mask)
    splits = [split for split in MEMORY_SPLITS if split in sizes]
    device = config.device_setup
    processes = max(1, (device.process_count() or 1) // device.num_nodes)
    needed = sum(sizes[split] * (row + 1) for split in splits) * processes
    available = available_memory()
    allowed = min(limit, int(available * MEMORY_SHARE)) if available is not None else limit
    if needed > allowed:
        per = f" of {processes} training processes" if processes > 1 else ""
        seen = f", half of the {human_size(available)} available" if available is not None else ""
        raise ConfigError(
            f"data_source.cache: memory needs {human_size(needed)} for the decoded "
            f"{' and '.join(splits)} tiles{per} but {human_size(allowed)} fit "
            f"(cache_limit_gb: {config.data_source.cache_limit_gb:g}{seen}); use cache: disk, "
            "a larger cache_limit_gb, or cache: none"
        )
    caches: dict[str, TileCache] = {
        split: MemoryCache(sizes[split], image, mask) for split in splits
    }
    log.info(
        "data cache: memory, %s for %s tiles",
        human_size(needed),
        " and ".join(f"{sizes[split]} {split}" for split in splits),
    )
    return caches
