"""Spatial blocks for cross-validation: groups from the tiles' georeferencing.

The map is cut into square blocks of ``size`` map units, anchored at multiples of ``size`` in
the tiles' CRS: block ``(col, row)`` covers ``[col * size, (col + 1) * size)`` in x and
``[row * size, (row + 1) * size)`` in y (rows grow northwards, as y does). A tile belongs to
the block that holds the centre of its footprint (its bounds rectangle), so every group is one
contiguous piece of ground and adding tiles never renames a block.

A *buffer* leaves out of a task's training and validation sets every tile whose footprint lies
closer than ``buffer`` to the footprint of one of the task's test tiles (the distance between
two rectangles: 0 when they touch or overlap). Everything here is a pure function of the
footprints, so every launch of a job derives the same groups and the same task files.

On scene rows (``data_source.windows``) the footprints are those of the scenes' grid
windows, so "tile" here reads "grid window" (:func:`landseg.jobs.plan.window_block_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landseg.config.cross_validation import SpatialBlocks
from landseg.core.errors import ConfigError, DataError
from landseg.data.csvfiles import SamplePair
from landseg.jobs.folder import JobFolder

#: The map of the groups, written to the job folder (its name is JobFolder's).
MAP_FILE = JobFolder.BLOCK_MAP_FILE
#: Rectangle pairs compared at once by :func:`near_tiles` (bounds the memory it uses).
_CHUNK = 1 << 22
#: Above this many blocks the map draws no block labels (they would hide the tiles).
_MAX_LABELS = 80
#: Above this many groups the map has no legend.
_MAX_LEGEND = 24

Bounds = tuple[float, float, float, float]  # left, bottom, right, top, in map units


def read_footprints(pairs: Sequence[SamplePair]) -> tuple[list[Bounds], str]:
    """Each image's footprint and the CRS they share (its text), from the raster headers.

    A tile without a CRS (a transform alone does not place it on the map) or without a
    geotransform, or in another CRS than the first tile, is a :class:`DataError` naming it.
    """
    import rasterio
    from rasterio.crs import CRS

    from landseg.data.raster import open_raster

    footprints: list[Bounds] = []
    first: tuple[SamplePair, CRS] | None = None
    same: dict[str, bool] = {}  # CRS WKT -> equal to the first tile's
    problems: list[str] = []
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):  # no folder listing per open
        for pair in pairs:
            if not pair.image.is_file():
                problems.append(f"{pair.where()}: image {pair.image} does not exist")
                continue
            try:
                with open_raster(pair.image) as src:
                    crs, transform, bounds = src.crs, src.transform, src.bounds
            except DataError as error:
                problems.append(f"{pair.where()}: {error.problems[0]}")
                continue
            need = "cross_validation.spatial_blocks needs georeferenced tiles"
            if crs is None:
                raise DataError(f"{pair.where()}: image {pair.image} has no CRS; {need}")
            if transform.is_identity:
                raise DataError(f"{pair.where()}: image {pair.image} has no geotransform; {need}")
            if first is None:
                first = (pair, crs)
            wkt = crs.to_wkt()
            if wkt not in same:
                same[wkt] = crs == first[1]
            if not same[wkt]:
                raise DataError(
                    f"{pair.where()}: image {pair.image} is in {crs_name(crs)}, but "
                    f"{first[0].image} ({first[0].where()}) is in {crs_name(first[1])}; "
                    "cross_validation.spatial_blocks needs every tile in one CRS"
                )
            footprints.append(
                (float(bounds.left), float(bounds.bottom), float(bounds.right), float(bounds.top))
            )
    if problems:
        extra = len(problems) - 10
        raise DataError(problems[:10] + ([f"... and {extra} more rows"] if extra > 0 else []))
    return footprints, crs_name(first[1]) if first else ""


def crs_name(crs: Any) -> str:
    """``EPSG:26986`` when the CRS has an authority code, else its name."""
    try:
        code = crs.to_string()
    except Exception:  # a CRS without a PROJ string: its name will do
        code = ""
    return code if code and len(code) <= 40 else str(getattr(crs, "name", "") or "custom CRS")


def crs_name_of(path: Path) -> str:
    """The CRS of one raster, as :func:`crs_name` writes it ("" when it has none)."""
    from landseg.data.raster import open_raster

    with open_raster(path) as src:
        return crs_name(src.crs) if src.crs is not None else ""


def centres(footprints: Iterable[Bounds]) -> np.ndarray:
    """``(n, 2)`` centres (x, y) of the footprints."""
    boxes = as_array(footprints)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def as_array(footprints: Iterable[Bounds]) -> np.ndarray:
    return np.asarray(list(footprints), dtype=np.float64).reshape(-1, 4)


def block_size(points: np.ndarray, spec: SpatialBlocks) -> float:
    """``spec.size``, or the size that covers the centres' bounding box with about ``number``
    blocks: ``max(sqrt(W * H / number), max(W, H) / number)`` for a box of ``W x H``."""
    if spec.size is not None:
        return float(spec.size)
    number = int(spec.number or 2)
    width, height = np.ptp(points, axis=0) if len(points) else (0.0, 0.0)
    size = max(math.sqrt(width * height / number), max(width, height) / number)
    if not size > 0:
        raise ConfigError(
            "cross_validation.spatial_blocks.number: every tile centre is at the same place; "
            "there is nothing to cut into blocks"
        )
    return float(size)


def block_indices(points: np.ndarray, size: float) -> np.ndarray:
    """``(n, 2)`` integer (col, row) of the block that holds each point."""
    return np.floor(points / size).astype(np.int64).reshape(-1, 2)


def block_name(col: int, row: int) -> str:
    return f"block-{col}-{row}"


def assign_blocks(footprints: Sequence[Bounds], spec: SpatialBlocks) -> tuple[list[str], float]:
    """Each footprint's block name (from its centre), and the block size used."""
    points = centres(footprints)
    size = block_size(points, spec)
    return [block_name(int(c), int(r)) for c, r in block_indices(points, size)], size


def join_folds(counts: dict[str, int], folds: int, order: Any) -> dict[str, str]:
    """Group name -> fold name (``fold1`` .. ``foldK``), balanced by tile count.

    Greedy and deterministic: the groups in descending tile count (ties in ``order``, a sort
    key such as natural order), each to the fold with the fewest tiles so far (ties: the
    lowest fold number).
    """
    if folds > len(counts):
        raise ConfigError(
            f"cross_validation.folds: {folds} folds need at least {folds} groups to join, "
            f"found {len(counts)}"
        )
    sizes = [0] * folds
    assignment: dict[str, str] = {}
    for name in sorted(counts, key=lambda g: (-counts[g], order(g))):
        fold = min(range(folds), key=lambda i: (sizes[i], i))
        sizes[fold] += counts[name]
        assignment[name] = f"fold{fold + 1}"
    return assignment


def rectangle_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, m)`` distances between the rectangles ``a`` ``(n, 4)`` and ``b`` ``(m, 4)``."""
    dx = np.maximum(np.maximum(b[None, :, 0] - a[:, None, 2], a[:, None, 0] - b[None, :, 2]), 0)
    dy = np.maximum(np.maximum(b[None, :, 1] - a[:, None, 3], a[:, None, 1] - b[None, :, 3]), 0)
    return np.hypot(dx, dy)


def near_tiles(
    candidates: np.ndarray, tests: np.ndarray, test_units: Sequence[str], buffer: float
) -> np.ndarray:
    """Which ``candidates`` lie closer than ``buffer`` to one of the ``tests`` rectangles.

    The test rectangles are taken block by block (``test_units``): only the candidates near a
    block's bounding box are compared with its tiles, so large jobs stay fast.
    """
    near = np.zeros(len(candidates), dtype=bool)
    if buffer <= 0 or not len(candidates) or not len(tests):
        return near
    units: dict[str, list[int]] = {}
    for i, unit in enumerate(test_units):
        units.setdefault(unit, []).append(i)
    for members in units.values():
        boxes = tests[members]
        hull = np.array(
            [[boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]]
        )
        close = np.flatnonzero(~near & (rectangle_distances(candidates, hull)[:, 0] < buffer))
        step = max(1, _CHUNK // len(boxes))
        for start in range(0, len(close), step):
            chunk = close[start : start + step]
            near[chunk] |= rectangle_distances(candidates[chunk], boxes).min(axis=1) < buffer
    return near


# ---------------------------------------------------------------------------- the map


def write_map(
    path: Path,
    footprints: Sequence[Bounds],
    groups: Sequence[str],
    size: float,
    crs: str,
    order: Any,
) -> None:
    """The tiles coloured by group, the outline of every block, and the groups' names."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    from landseg.core.files import atomic_path
    from landseg.loggers.figures import class_palette, new_figure

    boxes = as_array(footprints)
    names = sorted(set(groups), key=order)
    palette = class_palette(len(names)).astype(np.float64) / 255
    colour = {name: palette[i] for i, name in enumerate(names)}
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    width, height = boxes[:, 2].max() - x0, boxes[:, 3].max() - y0
    aspect = height / width if width > 0 else 1.0
    fig = new_figure(9.0, min(12.0, max(3.5, 7.0 * aspect)))
    ax = fig.add_subplot(1, 1, 1)
    tiles = [Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1]) for b in boxes]
    ax.add_collection(
        PatchCollection(
            tiles,
            facecolors=[colour[g] for g in groups],
            edgecolors="white",
            linewidths=0.3,
        )
    )
    points = centres(footprints)
    cells = block_indices(points, size)
    blocks: dict[tuple[int, int], str] = {}
    for (col, row), group in zip(cells.tolist(), groups, strict=True):
        blocks.setdefault((col, row), group)
    ax.add_collection(
        PatchCollection(
            [Rectangle((c * size, r * size), size, size) for c, r in blocks],
            facecolors="none",
            edgecolors="black",
            linewidths=0.8,
        )
    )
    if len(blocks) <= _MAX_LABELS:
        for (col, row), group in blocks.items():
            ax.text(
                (col + 0.5) * size,
                (row + 0.5) * size,
                group,
                ha="center",
                va="center",
                fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0, "pad": 1},
            )
    xs = [c * size for c, _ in blocks] + [(c + 1) * size for c, _ in blocks]
    ys = [r * size for _, r in blocks] + [(r + 1) * size for _, r in blocks]
    margin = 0.02 * max(width, height, size)
    ax.set_xlim(min(min(xs), x0) - margin, max(max(xs), x0 + width) + margin)
    ax.set_ylim(min(min(ys), y0) - margin, max(max(ys), y0 + height) + margin)
    ax.set_aspect("equal")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"x ({crs})")
    ax.set_ylabel("y")
    ax.set_title(
        f"{len(boxes)} tiles, {len(blocks)} blocks of {size:g} map units, {len(names)} groups"
    )
    if len(names) <= _MAX_LEGEND:
        counts = {name: 0 for name in names}
        for group in groups:
            counts[group] += 1
        ax.legend(
            handles=[Patch(color=colour[n], label=f"{n} ({counts[n]})") for n in names],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            frameon=False,
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
