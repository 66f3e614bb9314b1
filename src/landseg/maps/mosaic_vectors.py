"""One GeoPackage for a job's many scenes: ``DIR/mosaic.gpkg``, polygons merged across borders.

Each scene's polygons (:func:`landseg.maps.vectorize.vectorize`, ``DIR/<stem>.gpkg``) end where
the scene ends, so a field or a roof on a border between two scenes is two polygons. Here the
scenes on one pixel grid (one CRS, one pixel size, origins a whole number of pixels apart) are
read one at a time and brought into the pixel coordinates of that grid, where every vertex is
an integer (exact, as inside :mod:`landseg.maps.vectorize`). A polygon that does not reach its
scene's edge is written as it is; the ones that do are kept, and at the end the kept polygons of
each class that touch each other are unioned (``shapely.union_all``) and split into their parts:
two halves of a region cut by a border become one polygon whose area is the sum of theirs, and
two regions meeting only at a pixel corner stay two, as within a scene. Every polygon takes the
canonical form of the per-scene files, and the fields ``class_id`` and ``class_name`` are theirs.

Scenes on another grid or CRS than the largest group of scenes (the first in path order on a
tie) are left out of ``mosaic.gpkg`` (their own ``<stem>.gpkg`` keeps their polygons): merging
needs one grid, and one layer has one CRS. :func:`grid_groups` tells the caller which, to say so.

Polygons simplified per scene (``--simplify``) no longer lie on the pixel grid, and their
shared edges may not match: with a tolerance, the regions are traced again from the class
rasters, merged, and only then simplified (:func:`write_mosaic_vectors`). Memory: one scene's
polygons and the polygons touching scene edges.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import shapely
from rasterio.transform import Affine

from landseg.core.files import atomic_path
from landseg.maps.mosaic import grid_info, grid_mismatch
from landseg.maps.vectorize import _touching_groups, _Writer, regions

MOSAIC_VECTORS = "mosaic.gpkg"


@dataclass(frozen=True)
class GridGroups:
    """Scenes' rasters sorted into pixel grids: ``main`` (mosaicked) and ``apart``."""

    main: list[Path]
    apart: list[Path]
    reason: dict[Path, str]  # why each of ``apart`` is not on ``main``'s grid

    def line(self) -> str | None:
        """One line naming the scenes left apart (None: none)."""
        if not self.apart:
            return None
        names = ", ".join(f"{p.stem} ({self.reason[p]})" for p in self.apart)
        return (
            f"{len(self.apart)} scene(s) on another grid than {self.main[0].stem}, kept apart "
            f"(their own files keep their polygons): {names}"
        )


def grid_groups(rasters: Sequence[Path]) -> GridGroups:
    """The rasters on the grid of the largest group (ties: the first in path order), the
    others with their reason (another CRS, pixel size, or grid)."""
    infos = [grid_info(path) for path in sorted(rasters)]
    groups: list[list[dict[str, Any]]] = []
    for info in infos:
        for group in groups:
            if grid_mismatch(group[0], info, bands=False) is None:
                group.append(info)
                break
        else:
            groups.append([info])
    if not groups:
        return GridGroups([], [], {})
    main = max(groups, key=len)  # the first of the largest
    apart = [i for group in groups if group is not main for i in group]
    return GridGroups(
        [i["path"] for i in main],
        [i["path"] for i in apart],
        {i["path"]: str(grid_mismatch(main[0], i, bands=False)) for i in apart},
    )


@dataclass(frozen=True)
class MosaicVectors:
    destination: Path
    polygons: int
    joined: int  # pieces of polygons cut by scene borders joined to their other parts


def write_mosaic_vectors(
    folder: Path,
    scenes: Sequence[tuple[Path, Path]],
    *,
    simplify: float | None = None,
    classes: Sequence[int] | None = None,
    min_area: float | None = None,
) -> MosaicVectors | None:
    """Write ``folder/mosaic.gpkg`` from ``scenes``, (class raster, its GeoPackage) pairs on
    one pixel grid (see :func:`grid_groups`); None when there is none.

    With ``simplify`` (the tolerance the scenes' files were simplified with), the scenes'
    simplified polygons no longer share their edges, so they are not read: each scene's
    regions are traced again from its class raster (with the same ``classes`` and
    ``min_area``, :func:`landseg.maps.vectorize.regions`), merged across borders exactly, and
    only then simplified, every polygon of the mosaic alike."""
    if not scenes:
        return None
    scenes = sorted(scenes)
    infos = [grid_info(raster) for raster, _ in scenes]
    first = infos[0]["transform"]
    res_x, res_y = first.a, first.e
    left = min(i["transform"].c for i in infos)
    top = (
        max(i["transform"].f for i in infos) if res_y < 0 else min(i["transform"].f for i in infos)
    )
    grid = Affine(res_x, 0.0, left, 0.0, res_y, top)

    def to_pixels(coordinates: np.ndarray) -> np.ndarray:
        x = (coordinates[:, 0] - left) / res_x
        y = (coordinates[:, 1] - top) / res_y
        pixels = np.stack([x, y], axis=1)
        nearest = np.round(pixels)
        return np.where(np.abs(pixels - nearest) < 1e-6, nearest, pixels)

    raw = bool(simplify)
    labels = [_labels(i, gpkg) if raw else None for i, (_, gpkg) in zip(infos, scenes, strict=True)]
    read = [None if raw else _read(gpkg) for _, gpkg in scenes]
    names: dict[int, str] = {}
    for scene_labels, found in zip(labels, read, strict=True):
        if scene_labels is not None:
            names.update(enumerate(scene_labels))
        elif found is not None:
            names.update(zip(found[1].tolist(), found[2].tolist(), strict=True))
    table = tuple(names.get(k, "") for k in range(max(names, default=-1) + 1))
    crs = infos[0]["crs"].to_wkt() if infos[0]["crs"] is not None else None
    destination = Path(folder) / MOSAIC_VECTORS
    border: dict[int, list[object]] = {}
    joined = 0
    with atomic_path(destination) as tmp:
        tmp.unlink()  # pyogrio creates the GeoPackage itself
        writer = _Writer(tmp, destination.stem, crs, grid, table, simplify)
        for index, ((raster, _), info) in enumerate(zip(scenes, infos, strict=True)):
            t = info["transform"]
            x0, y0 = round((t.c - left) / res_x), round((t.f - top) / res_y)
            x1, y1 = x0 + info["width"], y0 + info["height"]
            found = read[index]
            if found is None:  # traced again, in the scene's pixels: shifted onto the grid's
                traced, ids = regions(
                    raster, labels[index] or table, classes=classes, min_area=min_area
                )
                shift = np.array([x0, y0], dtype=np.float64)
                polygons = shapely.transform(traced, lambda c, by=shift: c + by)
            else:
                polygons, ids = shapely.transform(found[0], to_pixels), found[1]
                read[index] = None  # one scene's polygons in memory at a time
            xmin, ymin, xmax, ymax = shapely.bounds(polygons).T
            edge = (xmin <= x0) | (ymin <= y0) | (xmax >= x1) | (ymax >= y1)
            writer.add(polygons[~edge], ids[~edge])
            for polygon, class_id in zip(polygons[edge], ids[edge], strict=True):
                border.setdefault(int(class_id), []).append(polygon)
        for class_id in sorted(border):
            pieces = np.array(border.pop(class_id), dtype=object)
            for group in _touching_groups(pieces):
                if len(group) == 1:
                    parts = pieces[group]
                else:
                    parts = shapely.get_parts(shapely.union_all(pieces[group]))
                    joined += len(group) - len(parts)
                writer.add(np.asarray(parts, dtype=object), np.full(len(parts), class_id))
        writer.close()
    return MosaicVectors(destination, sum(writer.polygons.values()), joined)


def _labels(info: dict[str, Any], gpkg: Path) -> list[str]:
    """A class raster's class names (its ``landseg_class_labels`` tag, else its polygons')."""
    if info["labels"]:
        return [str(label) for label in json.loads(info["labels"])]
    _, ids, names = _read(gpkg)
    table = dict(zip(ids.tolist(), names.tolist(), strict=True))
    return [str(table.get(k, "")) for k in range(max(table, default=-1) + 1)]


def _read(gpkg: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scene's polygons (map coordinates), class ids and class names."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        _, _, wkb, fields = pyogrio.raw.read(gpkg, columns=["class_id", "class_name"])
    geometries = shapely.from_wkb(wkb) if len(wkb) else np.empty(0, dtype=object)
    return (
        np.asarray(geometries, dtype=object),
        np.asarray(fields[0], dtype=np.int64),
        np.asarray(fields[1], dtype=object),
    )
