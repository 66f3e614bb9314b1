"""Class raster -> GeoPackage of polygons: one polygon per 4-connected region of one class.

Tracing is GDAL's (``rasterio.features.shapes``, 4-connectivity), geometry is shapely's (GEOS),
writing is pyogrio's; nothing here walks pixel edges by hand.

Blocks. The raster is read in windows of ``block_size`` x ``block_size`` pixels and each window
is traced on its own, in **pixel coordinates** (integers, so every vertex is exact). A piece that
does not reach an inner window border is a whole region and is written at once. A piece that
does is kept; at the end the kept pieces of each class that touch each other (an STRtree query)
are unioned (``shapely.union_all``) and split into their parts. A valid polygon's interior is
connected, so the parts are exactly the 4-connected regions: two regions of one class that meet
only at a pixel corner stay two polygons, and a region that crosses any number of windows
(one with holes, a ring) becomes one polygon. Every polygon is then brought to one canonical
form (``shapely.normalize``, collinear vertices dropped by a zero-tolerance simplification), so
the output does not depend on ``block_size``, and only then mapped through the raster's affine
transform. Memory: one window, the pieces that touch window borders, and up to
:data:`WRITE_BATCH` finished polygons waiting to be written.

Options, all off by default (the default GeoPackage holds exactly the raster's regions):

* ``min_area`` (map units squared): regions smaller than it are merged into their largest
  neighbour first, by ``rasterio.features.sieve`` (4-connectivity) on the whole raster, with
  nodata pixels masked out (they neither grow nor swallow a region). A small region whose
  neighbours are all small or nodata stays, as GDAL's sieve leaves it. Sieving needs the whole
  raster in memory: about 3 bytes per pixel for a uint8 raster (the classes, their valid mask
  and the sieved copy; 9 for wider integer types), plus GDAL's bookkeeping of a few tens of
  bytes per region. Refused on a geographic CRS, whose unit (degrees) has no area.
* ``classes``: the class ids to write (after sieving).
* ``simplify``: a tolerance in map units, ``shapely.simplify(..., preserve_topology=True)`` on
  each polygon (it stays valid, with its holes). Neighbouring polygons are simplified each on
  its own, so their shared edges may no longer match exactly.

Pixels equal to the raster's nodata (255, ``landseg predict``'s value, when it declares none)
produce no polygon. A raster without a CRS is written in the coordinates of its transform
(pixel coordinates for an ungeoreferenced raster) with no CRS in the GeoPackage.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import shapely
from rasterio.features import shapes, sieve
from rasterio.transform import Affine
from rasterio.windows import Window

from landseg.core.errors import DataError, LandsegError
from landseg.core.files import atomic_path
from landseg.data.raster import open_raster

#: Class value of "no class" when a raster declares no nodata (``landseg predict`` writes 255).
DEFAULT_NODATA = 255
#: Features handed to pyogrio at once.
WRITE_BATCH = 50_000
#: Integer types GDAL traces and sieves as they are; other integer types are traced as int32.
_GDAL_TYPES = ("uint8", "uint16", "int16", "int32")

#: ``read(window) -> (classes (rows, cols) in a type GDAL accepts, valid (rows, cols) bool)``.
BlockReader = Callable[[Window], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class VectorSummary:
    """What :func:`vectorize` wrote, per class id (only the classes it wrote polygons of)."""

    destination: Path
    crs: str | None
    pixel_area: float
    class_names: tuple[str, ...]
    #: Pixels of each class in the raster that was traced (after sieving).
    pixels: dict[int, int] = field(default_factory=dict)
    #: Polygons written per class.
    polygons: dict[int, int] = field(default_factory=dict)
    #: Area of the polygons written per class, in map units squared (after ``simplify``).
    area: dict[int, float] = field(default_factory=dict)
    #: Pixels whose class sieving changed (0 without ``min_area``).
    sieved_pixels: int = 0

    def lines(self) -> list[str]:
        """One line per class, then the total: what the command line prints."""
        rows = [
            f"  {class_id:>3} {self.class_names[class_id]:<20} "
            f"{self.polygons[class_id]:>9} polygons {self.area[class_id]:>16.6g} square map units"
            for class_id in sorted(self.polygons)
        ]
        total = sum(self.polygons.values())
        crs = "" if self.crs else " (no CRS: in the coordinates of the raster's transform)"
        rows.append(f"{total} polygons -> {self.destination}{crs}")
        if self.sieved_pixels:
            rows.append(f"{self.sieved_pixels} pixels of small regions merged into neighbours")
        return rows


def vectorize(
    raster: Path,
    destination: Path,
    class_names: Sequence[str],
    *,
    classes: Sequence[int] | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    block_size: int = 1024,
) -> VectorSummary:
    """Write the regions of the one-band class raster ``raster`` to the GeoPackage ``destination``.

    One polygon per 4-connected region, fields ``class_id`` (int) and ``class_name`` (str),
    in the raster's CRS, layer named after ``destination``'s stem; the file appears whole or
    not at all. ``class_names[k]`` names class id k; a pixel value with no name is an error.
    See the module's docstring for ``classes``, ``min_area`` and ``simplify``.
    """
    raster, destination = Path(raster), Path(destination)
    names = tuple(str(name) for name in class_names)
    _check_options(names, classes, min_area, simplify, block_size)
    with (
        _traced(raster, names, classes, min_area, block_size) as traced,
        atomic_path(destination) as tmp,
    ):
        tmp.unlink()  # pyogrio creates the GeoPackage itself
        writer = _Writer(tmp, destination.stem, traced.crs, traced.transform, names, simplify)
        for polygons, ids in traced.batches:
            writer.add(polygons, ids)
        writer.close()
    tracer = traced.tracer
    return VectorSummary(
        destination=destination,
        crs=traced.crs,
        pixel_area=abs(traced.transform.determinant),
        class_names=names,
        pixels={k: int(tracer.pixels[k]) for k in traced.kept if tracer.pixels[k]},
        polygons=writer.polygons,
        area=writer.area,
        sieved_pixels=traced.sieved_pixels,
    )


def regions(
    raster: Path,
    class_names: Sequence[str],
    *,
    classes: Sequence[int] | None = None,
    min_area: float | None = None,
    block_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """The regions :func:`vectorize` writes, before ``simplify``, in the **pixel coordinates**
    of ``raster`` (integer vertices) and canonical form, with their class ids: what
    :mod:`landseg.maps.mosaic_vectors` merges across scene borders before simplifying."""
    names = tuple(str(name) for name in class_names)
    _check_options(names, classes, min_area, None, block_size)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    with _traced(Path(raster), names, classes, min_area, block_size) as traced:
        found = [(p, i) for p, i in traced.batches if len(p)]
    if not found:
        return _no_polygons()
    polygons = np.concatenate([p for p, _ in found])
    return _canonical(polygons), np.concatenate([i for _, i in found])


@dataclass
class _Traced:
    """A class raster being traced: its CRS (WKT), transform, the classes kept, the tracer,
    and ``batches``, the (pixel-coordinate polygons, class ids) of its windows, then of the
    pieces merged across windows."""

    crs: str | None
    transform: Affine
    kept: list[int]
    tracer: _Tracer
    sieved_pixels: int
    batches: Iterator[tuple[np.ndarray, np.ndarray]]


@contextlib.contextmanager
def _traced(
    raster: Path,
    names: tuple[str, ...],
    classes: Sequence[int] | None,
    min_area: float | None,
    block_size: int,
) -> Iterator[_Traced]:
    kept = sorted(set(classes)) if classes is not None else list(range(len(names)))
    with open_raster(raster) as src:
        if src.count != 1:
            raise DataError(f"{raster}: a class raster has one band; this one has {src.count}")
        dtype = np.dtype(src.dtypes[0])
        if dtype.kind not in "iu":
            raise DataError(f"{raster}: a class raster holds integer class ids, not {dtype.name}")
        transform: Affine = src.transform
        crs = src.crs.to_wkt() if src.crs else None
        pixel_area = abs(transform.determinant)
        nodata = DEFAULT_NODATA if src.nodata is None else src.nodata
        height, width = src.height, src.width
        if min_area is not None and src.crs is not None and src.crs.is_geographic:
            raise DataError(
                f"--min-area is in map units squared: {raster} has a geographic CRS "
                "(degrees); reproject it first"
            )

        def read_file(window: Window) -> tuple[np.ndarray, np.ndarray]:
            return _gdal_classes(src.read(1, window=window), nodata)

        read: BlockReader = read_file
        sieved_pixels = 0
        if min_area is not None:
            read, sieved_pixels = _sieved_reader(src.read(1), nodata, min_area / pixel_area)

        tracer = _Tracer(raster, names, kept, height, width)

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for window in _windows(height, width, block_size):
                yield tracer.trace(window, *read(window))
            yield tracer.merge_border_pieces()

        yield _Traced(crs, transform, kept, tracer, sieved_pixels, batches())


def _check_options(
    names: tuple[str, ...],
    classes: Sequence[int] | None,
    min_area: float | None,
    simplify: float | None,
    block_size: int,
) -> None:
    problems = []
    if not names:
        problems.append("no class names: the class ids cannot be named")
    if classes is not None:
        unknown = sorted({int(k) for k in classes} - set(range(len(names))))
        if unknown:
            problems.append(
                f"--classes: {', '.join(map(str, unknown))} not among the class ids "
                f"0..{len(names) - 1}"
            )
    if min_area is not None and not (math.isfinite(min_area) and min_area > 0):
        problems.append(f"--min-area must be a positive area in map units squared, not {min_area}")
    if simplify is not None and not (math.isfinite(simplify) and simplify >= 0):
        problems.append(f"--simplify must be a tolerance >= 0 in map units, not {simplify}")
    if block_size < 1:
        problems.append(f"block size must be at least 1 pixel, not {block_size}")
    if problems:
        raise LandsegError(problems)


def _gdal_classes(values: np.ndarray, nodata: float) -> tuple[np.ndarray, np.ndarray]:
    """Class values in a type GDAL traces, and where they are valid (not nodata)."""
    valid = values != nodata
    if values.dtype.name not in _GDAL_TYPES:
        # uint32, int64, ...: ids beyond int32 are no class ids (named an error later) anyway
        values = np.clip(np.where(valid, values, 0), -1, 2**31 - 1).astype(np.int32)
    return values, valid


def _sieved_reader(values: np.ndarray, nodata: float, min_pixels: float) -> tuple[BlockReader, int]:
    """The whole raster sieved in memory (regions under ``min_pixels`` merged into neighbours)."""
    classes, valid = _gdal_classes(values, nodata)
    del values
    # a region of n pixels is kept when n * pixel area >= min_area (the 1e-9 absorbs rounding)
    size = max(1, math.ceil(min_pixels - 1e-9))
    sieved = sieve(classes, size, mask=valid, connectivity=4) if size > 1 else classes
    changed = int(np.count_nonzero(sieved != classes))
    del classes

    def read(window: Window) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = window.toslices()
        return sieved[rows, cols], valid[rows, cols]

    return read, changed


def _windows(height: int, width: int, block_size: int) -> Iterator[Window]:
    for row in range(0, height, block_size):
        for col in range(0, width, block_size):
            yield Window(col, row, min(block_size, width - col), min(block_size, height - row))


class _Tracer:
    """Traces windows in pixel coordinates, keeps the pieces cut by window borders, merges them."""

    def __init__(
        self, raster: Path, names: tuple[str, ...], kept: list[int], height: int, width: int
    ):
        self.raster = raster
        self.names = names
        self.kept = np.array(kept, dtype=np.int64)
        self.height, self.width = height, width
        self.pixels = np.zeros(len(names), dtype=np.int64)
        self.border_pieces: dict[int, list[shapely.Polygon]] = {}

    def trace(
        self, window: Window, values: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The whole regions of one window (pixel coordinates) and their classes."""
        found = values[valid]
        if found.size:
            low, high = int(found.min()), int(found.max())
            if low < 0 or high >= len(self.names):
                bad = high if high >= len(self.names) else low
                raise DataError(
                    f"{self.raster}: class id {bad} has no name ({len(self.names)} class names "
                    f"for ids 0..{len(self.names) - 1})"
                )
            self.pixels += np.bincount(found, minlength=len(self.names))
        keep = valid & np.isin(values, self.kept)
        if not keep.any():
            return _no_polygons()
        col, row = int(window.col_off), int(window.row_off)
        polygons, ids = _polygons(
            shapes(values, mask=keep, connectivity=4, transform=Affine.translation(col, row))
        )
        # a piece reaching a border shared with another window may continue there
        xmin, ymin, xmax, ymax = shapely.bounds(polygons).T
        cut = (
            ((xmin == col) & (col > 0))
            | ((ymin == row) & (row > 0))
            | ((xmax == col + window.width) & (col + window.width < self.width))
            | ((ymax == row + window.height) & (row + window.height < self.height))
        )
        for polygon, class_id in zip(polygons[cut], ids[cut], strict=True):
            self.border_pieces.setdefault(int(class_id), []).append(polygon)
        return polygons[~cut], ids[~cut]

    def merge_border_pieces(self) -> tuple[np.ndarray, np.ndarray]:
        """The regions the kept pieces make up: touching pieces of one class, unioned."""
        merged: list[Any] = []
        ids: list[int] = []
        for class_id in sorted(self.border_pieces):
            pieces = np.array(self.border_pieces.pop(class_id), dtype=object)
            for group in _touching_groups(pieces):
                if len(group) == 1:
                    parts = pieces[group]
                else:
                    parts = shapely.get_parts(shapely.union_all(pieces[group]))
                merged.extend(parts)
                ids.extend([class_id] * len(parts))
        if not merged:
            return _no_polygons()
        return np.array(merged, dtype=object), np.array(ids, dtype=np.int64)


def _touching_groups(pieces: np.ndarray) -> list[np.ndarray]:
    """Indices of ``pieces`` grouped by touching (transitively), each group in index order."""
    left, right = shapely.STRtree(pieces).query(pieces, predicate="intersects")
    parent = np.arange(len(pieces))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        if a < b:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(len(pieces))])
    order = np.argsort(roots, kind="stable")
    starts = np.flatnonzero(np.diff(roots[order], prepend=-1))
    return np.split(order, starts[1:])


def _polygons(traced: Iterable[tuple[dict[str, Any], float]]) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's GeoJSON-like polygons as shapely polygons (built at once, from ragged arrays)."""
    rings: list[list[tuple[float, float]]] = []
    ring_counts: list[int] = []
    ids: list[int] = []
    for geometry, value in traced:
        rings.extend(geometry["coordinates"])
        ring_counts.append(len(geometry["coordinates"]))
        ids.append(int(value))
    if not ids:
        return _no_polygons()
    coordinates = np.array(list(chain.from_iterable(rings)), dtype=np.float64)
    ring_offsets = np.cumsum([0, *map(len, rings)])
    polygon_offsets = np.cumsum([0, *ring_counts])
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coordinates, (ring_offsets, polygon_offsets)
    )
    return polygons, np.array(ids, dtype=np.int64)


def _no_polygons() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)


def _canonical(polygons: np.ndarray) -> np.ndarray:
    """One form per region, whichever way it was traced or merged.

    ``normalize`` starts every ring at its lowest (x, y) vertex, a true corner of a pixel-edge
    ring; the zero-tolerance simplification then drops the collinear vertices a union leaves
    where a window border crossed a straight edge (GDAL's own traces have none).
    """
    return shapely.simplify(shapely.normalize(polygons), 0.0, preserve_topology=True)


class _Writer:
    """Maps pixel-coordinate polygons to map coordinates and appends them to the GeoPackage."""

    def __init__(
        self,
        path: Path,
        layer: str,
        crs: str | None,
        transform: Affine,
        names: tuple[str, ...],
        simplify: float | None,
    ):
        self.path, self.layer, self.crs = path, layer, crs
        self.names = np.array(names, dtype=object)
        self.simplify = simplify or None
        a, b, c, d, e, f = (
            transform.a,
            transform.b,
            transform.c,
            transform.d,
            transform.e,
            transform.f,
        )
        self.matrix = np.array([[a, d], [b, e]], dtype=np.float64)
        self.offset = np.array([c, f], dtype=np.float64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_count = 0
        self.created = False
        self.polygons: dict[int, int] = {}
        self.area: dict[int, float] = {}

    def add(self, polygons: np.ndarray, ids: np.ndarray) -> None:
        if not len(polygons):
            return
        geometries = shapely.transform(_canonical(polygons), self._to_map)
        if self.simplify:
            geometries = shapely.simplify(geometries, self.simplify, preserve_topology=True)
        areas = shapely.area(geometries)
        for class_id in np.unique(ids).tolist():
            here = ids == class_id
            self.polygons[class_id] = self.polygons.get(class_id, 0) + int(here.sum())
            self.area[class_id] = self.area.get(class_id, 0.0) + float(areas[here].sum())
        self.pending.append((geometries, ids))
        self.pending_count += len(ids)
        if self.pending_count >= WRITE_BATCH:
            self._flush()

    def close(self) -> None:
        self._flush(always=not self.created)  # an empty GeoPackage still has its layer

    def _to_map(self, coordinates: np.ndarray) -> np.ndarray:
        return coordinates @ self.matrix + self.offset

    def _flush(self, always: bool = False) -> None:
        if not self.pending and not always:
            return
        if self.pending:
            geometries = np.concatenate([g for g, _ in self.pending])
            ids = np.concatenate([i for _, i in self.pending])
        else:
            geometries, ids = _no_polygons()
        with warnings.catch_warnings():
            # the temporary file's name ends in .tmp; the renamed one in .gpkg
            warnings.filterwarnings("ignore", "The filename extension should be", RuntimeWarning)
            # a raster without CRS: said in the docs and the summary
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
            pyogrio.raw.write(
                self.path,
                shapely.to_wkb(geometries),
                [ids.astype(np.int32), self.names[ids] if len(ids) else np.empty(0, dtype=object)],
                ["class_id", "class_name"],
                layer=self.layer,
                driver="GPKG",
                geometry_type="Polygon",
                crs=self.crs,
                encoding="UTF-8",
                append=self.created,
            )
        self.created = True
        self.pending, self.pending_count = [], 0
