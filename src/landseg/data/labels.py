"""Labels of a scene window: polygons burnt, or a label raster resampled, onto the image's grid.

A scene row (:mod:`landseg.data.scenes`) names its labels as either

* a **vector file** (:data:`VECTOR_SUFFIXES`; one layer, or ``data_source.label_layer``): its
  polygons are reprojected to the image's CRS once per process (:func:`load_vector_labels`)
  and burnt into each window with :func:`rasterio.features.rasterize`
  (:func:`burn_labels`). ``data_source.label_field`` names the attribute holding the class,
  as a 0-based index or a name from ``class_labels``; pixels no polygon covers get
  ``data_source.label_background`` (a class, or not labelled). Where polygons overlap, **the
  later feature of the file wins** (rasterize burns in order, each over the previous ones).
  ``data_source.label_all_touched`` burns every pixel a polygon touches rather than those
  whose centre it covers;
* a **label raster** (class index or one-hot, the rules of :mod:`landseg.data.raster`) on any
  grid: read into the window's grid with nearest-neighbour resampling
  (:func:`read_label_window`); a raster on the image's own grid is read as is.

An **AOI** (area of interest) file holds polygons outside which pixels are not labelled
(:data:`~landseg.data.summary.IGNORE_INDEX`, like a mask's nodata) and no window is drawn
(:func:`aoi_inside`).

Everything here is pure: arguments in, arrays out; files are opened and closed per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from landseg.core.errors import DataError
from landseg.data.raster import _index_classes, _onehot_classes, open_raster
from landseg.data.summary import IGNORE_INDEX

#: File name endings read as polygons (anything else is a label raster).
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".fgb")
#: ``data_source.label_background`` that leaves uncovered pixels unlabelled.
BACKGROUND_IGNORE = "ignore"


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` is read as polygons (by its name's ending, case-insensitive)."""
    return str(path).lower().endswith(VECTOR_SUFFIXES)


@dataclass(frozen=True)
class VectorLabels:
    """A label file's polygons in the image's CRS, as GeoJSON-like dicts, and their classes.

    ``tree`` indexes the polygons' extents, so a window burns only the polygons that reach it
    (a file of many buildings costs a window its few neighbours, not the whole file)."""

    path: Path
    shapes: tuple[dict[str, Any], ...]
    classes: tuple[int, ...]
    tree: Any = field(default=None, compare=False, repr=False)

    def near(self, transform: Affine, shape: tuple[int, int]) -> list[int]:
        """Indices, in file order, of the polygons whose extent meets the window."""
        import shapely

        if self.tree is None:
            return list(range(len(self.shapes)))
        height, width = shape
        x0, y0 = transform @ (0, 0)
        x1, y1 = transform @ (width, height)
        window = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        return sorted(int(i) for i in self.tree.query(window))


def _read_layer(
    path: Path, layer: str | None, columns: Sequence[str], *, layer_key: str = "label_layer"
) -> tuple[CRS, list[bytes | None], dict[str, np.ndarray]]:
    """(CRS, WKB geometries, the columns asked for) of one layer; DataError naming the file."""
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        layers = pyogrio.list_layers(path)
        if layer is None and len(layers) > 1:
            names = ", ".join(str(name) for name in layers[:, 0])
            raise DataError(
                f"{path}: holds {len(layers)} layers ({names}); "
                + (
                    "name one with data_source.label_layer"
                    if layer_key == "label_layer"
                    else "an AOI file must hold one"
                )
            )
        meta, _, geometry, values = pyogrio.raw.read(path, layer=layer, columns=list(columns))
    except (DataSourceError, DataLayerError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: cannot read vector file ({reason})") from error
    if not meta.get("crs"):
        raise DataError(f"{path}: vector file has no CRS; its polygons cannot be placed")
    found = [str(name) for name in meta["fields"]]
    missing = [name for name in columns if name not in found]
    if missing:
        have = ", ".join(found) or "none"
        raise DataError(
            f"{path}: data_source.label_field {missing[0]!r} is not an attribute of its "
            f"polygons (attributes: {have})"
        )
    return CRS.from_user_input(meta["crs"]), list(geometry), dict(zip(found, values, strict=True))


def _to_shapes(wkbs: Sequence[bytes | None], src: CRS, dst: CRS) -> list[dict[str, Any] | None]:
    """WKB geometries in ``src`` as GeoJSON-like dicts in ``dst`` (None stays None)."""
    import shapely
    from rasterio.warp import transform_geom

    shapes: list[dict[str, Any] | None] = [
        shapely.geometry.mapping(shapely.from_wkb(wkb)) if wkb is not None else None for wkb in wkbs
    ]
    if src == dst:
        return shapes
    present = [shape for shape in shapes if shape is not None]
    moved = iter(transform_geom(src, dst, present) if present else [])
    return [next(moved) if shape is not None else None for shape in shapes]


def class_index(value: Any, class_labels: Sequence[str], n_classes: int) -> int | None:
    """The 0-based class a label attribute value stands for, None when it names none.

    Integers (and integral floats and digit strings) are indices; other strings are looked up
    in ``class_labels``.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if text in class_labels:
            return list(class_labels).index(text)
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number) or number != int(number) or not 0 <= number < n_classes:
        return None
    return int(number)


def background_class(background: str | int, class_labels: Sequence[str], n_classes: int) -> int:
    """``data_source.label_background`` as a class index, or IGNORE_INDEX for "ignore"."""
    if background == BACKGROUND_IGNORE:
        return IGNORE_INDEX
    found = class_index(background, class_labels, n_classes)
    if found is None:
        names = ", ".join(class_labels) or f"0..{n_classes - 1}"
        raise DataError(
            f"data_source.label_background: {background!r} is no class ({names}) and not "
            f'"{BACKGROUND_IGNORE}"'
        )
    return found


def load_vector_labels(
    path: str | Path,
    crs: CRS,
    *,
    field: str | None,
    layer: str | None,
    class_labels: Sequence[str],
    n_classes: int,
) -> VectorLabels:
    """The polygons of ``path`` reprojected to ``crs`` with their classes, in file order.

    Raises DataError naming the file: no CRS, a missing ``field``, a value that is no class
    (the first few are named). Without ``field`` every polygon is class 0 ... only with a
    single class would that be meaningful, so it is refused for more than one class.
    """
    path = Path(path)
    if field is None and n_classes > 1:
        raise DataError(
            f"{path}: data_source.label_field is required for vector labels of "
            f"{n_classes} classes (the attribute holding each polygon's class)"
        )
    source_crs, wkbs, values = _read_layer(path, layer, [field] if field else [])
    column = values[field] if field else np.zeros(len(wkbs), dtype=np.int64)
    classes: list[int] = []
    unknown: list[str] = []
    for value in column:
        found = class_index(value, class_labels, n_classes)
        if found is None:
            unknown.append(repr(value.item() if hasattr(value, "item") else value))
        classes.append(IGNORE_INDEX if found is None else found)
    if unknown:
        shown = ", ".join(list(dict.fromkeys(unknown))[:5])
        names = ", ".join(class_labels) or f"0..{n_classes - 1}"
        raise DataError(
            f"{path}: {len(unknown)} polygons have a {field} that is no class ({shown}); "
            f"classes: {names} (or their 0-based index)"
        )
    shapes = _to_shapes(wkbs, source_crs, crs)
    kept = [(shape, cls) for shape, cls in zip(shapes, classes, strict=True) if shape is not None]
    import shapely

    tree = shapely.STRtree([shapely.geometry.shape(shape) for shape, _ in kept])
    return VectorLabels(path, tuple(s for s, _ in kept), tuple(c for _, c in kept), tree)


def load_aoi(path: str | Path, crs: CRS, layer: str | None = None) -> tuple[dict[str, Any], ...]:
    """The polygons of an AOI file, reprojected to ``crs``; DataError naming the file."""
    path = Path(path)
    source_crs, wkbs, _ = _read_layer(path, layer, [], layer_key="aoi")
    return tuple(shape for shape in _to_shapes(wkbs, source_crs, crs) if shape is not None)


def burn_labels(
    labels: VectorLabels,
    transform: Affine,
    shape: tuple[int, int],
    *,
    background: int,
    all_touched: bool,
) -> np.ndarray:
    """The (H, W) int64 classes of a window (``transform``, ``shape``), later features on top."""
    from rasterio.features import rasterize

    near = labels.near(transform, shape)
    if not near:
        return np.full(shape, background, dtype=np.int64)
    burnt = rasterize(
        [(labels.shapes[i], labels.classes[i]) for i in near],
        out_shape=shape,
        transform=transform,
        fill=background,
        all_touched=all_touched,
        dtype="int32",
    )
    return burnt.astype(np.int64)


def aoi_inside(
    aoi: Sequence[dict[str, Any]], transform: Affine, shape: tuple[int, int]
) -> np.ndarray:
    """(H, W) bool: True for the pixels whose centre lies inside the AOI's polygons."""
    from rasterio.features import geometry_mask

    if not aoi:
        return np.zeros(shape, dtype=bool)
    return geometry_mask(aoi, out_shape=shape, transform=transform, invert=True)


def read_label_window(
    path: str | Path,
    crs: CRS | None,
    transform: Affine,
    shape: tuple[int, int],
    *,
    mask_bands: Sequence[int] | None,
    n_classes: int,
    ignore_index: int | None,
) -> np.ndarray:
    """The (H, W) int64 classes of a label raster on a window's grid (nearest neighbour).

    A label raster on the same grid as the window (same CRS, pixel size and pixel-aligned
    origin) is read with a plain window, bit for bit; any other grid is warped. Pixels the
    raster does not cover are not labelled.
    """
    from rasterio.enums import Resampling
    from rasterio.warp import reproject
    from rasterio.windows import Window

    height, width = shape
    with open_raster(path) as src:
        bands = [1] if src.count == 1 else (list(mask_bands) if mask_bands else None)
        indexes = bands or list(range(1, src.count + 1))
        nodata = src.nodata
        offset = _aligned_offset(src.transform, transform)
        same_crs = crs is None or src.crs is None or _same_crs(src.crs, crs)
        if same_crs and offset is not None:
            row, col = offset
            inside = row >= 0 and col >= 0 and row + height <= src.height
            inside = inside and col + width <= src.width
            values = src.read(  # boundless reads go through a VRT: only where needed
                indexes,
                window=Window(col, row, width, height),
                boundless=not inside,
                fill_value=nodata if nodata is not None else 0,
            ).astype(np.float64)
            if (
                src.count == 1 and nodata is None
            ):  # a class-index raster without nodata: mark outside
                outside = _outside(src.height, src.width, row, col, height, width)
                values[0][outside] = np.nan
                nodata = float("nan")
        else:
            if src.crs is None or crs is None:
                raise DataError(
                    f"{path}: label raster is not on its image's grid and one of them has no "
                    "CRS, so it cannot be reprojected onto it"
                )
            import rasterio

            values = np.full((len(indexes), height, width), np.nan, dtype=np.float64)
            for i, band in enumerate(indexes):  # GDAL's warper reads the blocks it needs
                reproject(
                    source=rasterio.band(src, band),
                    destination=values[i],
                    src_nodata=nodata,
                    dst_transform=transform,
                    dst_crs=crs,
                    dst_nodata=np.nan,
                    resampling=Resampling.nearest,
                )
            if src.count > 1:
                values = np.nan_to_num(values, nan=0.0)
            else:
                nodata = float("nan")
        if src.count == 1:
            return _index_classes(values[0], nodata, n_classes, ignore_index)
        return _onehot_classes(values, nodata)


def _outside(
    raster_height: int, raster_width: int, row: int, col: int, height: int, width: int
) -> np.ndarray:
    rows = np.arange(row, row + height)
    cols = np.arange(col, col + width)
    return (
        ~((rows >= 0) & (rows < raster_height))[:, None]
        | ~((cols >= 0) & (cols < raster_width))[None, :]
    )


def _same_crs(a: CRS, b: CRS) -> bool:
    try:
        return bool(a == b)
    except CRSError:
        return False


def _aligned_offset(source: Affine, window: Affine) -> tuple[int, int] | None:
    """(row, col) of the window's origin in the source's pixels, None when the grids differ."""
    scale = max(abs(source.a), abs(source.e), 1e-12)
    if any(abs(getattr(source, k) - getattr(window, k)) > 1e-6 * scale for k in "abde"):
        return None
    col, row = ~source @ (window.c, window.f)
    if abs(col - round(col)) > 0.01 or abs(row - round(row)) > 0.01:
        return None
    return round(row), round(col)
