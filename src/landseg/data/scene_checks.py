"""The data checks of scene rows (``data_source.windows``): one line per problem, naming the row.

:func:`scene_row_problems` checks what a scene row adds to a tile row, from headers and
polygons only (no pixel of a scene is read): the window fits in the image; a label raster
exists, opens and overlaps its image (it need not share its grid: it is resampled); a vector
label file opens, has a CRS, has ``data_source.label_field`` and only classes from
``class_labels``; an AOI opens, has a CRS and overlaps its scene. Band counts, dtypes and their
scaling are checked across rows by :func:`landseg.data.checks.check_data`, as for tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rasterio.crs import CRS

from landseg.config.schema import LandsegConfig
from landseg.core.errors import DataError
from landseg.data.csvfiles import SamplePair
from landseg.data.labels import is_vector, load_aoi, load_vector_labels
from landseg.data.raster import RasterHeader, check_mask_bands, mask_kind, read_header

Problem = tuple[str, str]  # (kind, line)


@dataclass
class SceneFacts:
    """What the scene rows tell the summary: the label kinds and one-hot band counts seen."""

    label_kinds: dict[str, str] = field(default_factory=dict)  # kind -> example row
    onehot_bands: dict[int, str] = field(default_factory=dict)
    _vectors: dict[tuple[Path, str], str | None] = field(default_factory=dict)
    _headers: dict[Path, RasterHeader | str] = field(default_factory=dict)


def _bounds(header: RasterHeader) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a georeferenced raster."""
    from affine import Affine

    transform = Affine.from_gdal(*header.transform) if header.transform else Affine.identity()
    xs, ys = zip(
        *(transform @ (c, r) for c in (0, header.width) for r in (0, header.height)),
        strict=True,
    )
    return min(xs), min(ys), max(xs), max(ys)


def _overlaps(
    image: RasterHeader, bounds: tuple[float, float, float, float], crs: CRS | None
) -> bool:
    from rasterio.warp import transform_bounds

    if crs is not None and image.crs is not None:
        bounds = transform_bounds(crs, CRS.from_wkt(image.crs), *bounds)
    left, bottom, right, top = _bounds(image)
    return bounds[0] < right and bounds[2] > left and bounds[1] < top and bounds[3] > bottom


def scene_row_problems(
    pair: SamplePair,
    image: RasterHeader,
    config: LandsegConfig,
    facts: SceneFacts,
) -> list[Problem]:
    """The problems of one scene row whose image header is ``image``; records its facts."""
    source = config.data_source
    windows = source.windows
    assert windows is not None
    where = pair.where()
    found: list[Problem] = []
    if image.height < windows.size or image.width < windows.size:
        found.append(
            (
                "window",
                f"{where}: data_source.windows.size {windows.size} is larger than image "
                f"{image.path} ({image.size})",
            )
        )
    crs = CRS.from_wkt(image.crs) if image.crs else None
    if is_vector(pair.mask):
        facts.label_kinds.setdefault("index", f"{pair.mask}, {where}")
        found += _vector_problems(pair, crs, config, facts)
    else:
        found += _raster_problems(pair, image, crs, config, facts)
    if pair.aoi is not None:
        found += _aoi_problems(pair, image, crs)
    return found


def _vector_problems(
    pair: SamplePair, crs: CRS | None, config: LandsegConfig, facts: SceneFacts
) -> list[Problem]:
    source = config.data_source
    where = pair.where()
    if not pair.mask.is_file():
        return [("missing", f"{where}: labels {pair.mask} do not exist")]
    if not source.class_labels:
        return [
            (
                "class_labels",
                f"{where}: vector labels {pair.mask} need data_source.class_labels (the "
                "classes their polygons are burnt as)",
            )
        ]
    if crs is None:
        return [("crs", f"{where}: image {pair.image} has no CRS to burn {pair.mask} on")]
    key = (pair.mask, crs.to_wkt())
    if key not in facts._vectors:
        try:
            load_vector_labels(
                pair.mask,
                crs,
                field=source.label_field,
                layer=source.label_layer,
                class_labels=source.class_labels,
                n_classes=len(source.class_labels),
            )
            facts._vectors[key] = None
        except DataError as error:
            facts._vectors[key] = error.problems[0]
    problem = facts._vectors[key]
    return [("labels", f"{where}: {problem}")] if problem else []


def _raster_problems(
    pair: SamplePair,
    image: RasterHeader,
    crs: CRS | None,
    config: LandsegConfig,
    facts: SceneFacts,
) -> list[Problem]:
    where = pair.where()
    if pair.mask not in facts._headers:
        if not pair.mask.is_file():
            facts._headers[pair.mask] = f"labels {pair.mask} do not exist"
        else:
            try:
                facts._headers[pair.mask] = read_header(pair.mask)
            except DataError as error:
                facts._headers[pair.mask] = error.problems[0]
    header = facts._headers[pair.mask]
    if isinstance(header, str):
        return [("missing", f"{where}: {header}")]
    kind = mask_kind(header.count)
    facts.label_kinds.setdefault(kind, f"{pair.mask}, {where}")
    if kind == "onehot":
        facts.onehot_bands.setdefault(header.count, f"{pair.mask}, {where}")
    found: list[Problem] = []
    bands = check_mask_bands(header, config.data_source.mask_bands)
    if bands:
        found.append(("mask_bands", bands))
    label_crs = CRS.from_wkt(header.crs) if header.crs else None
    georeferenced = header.transform is not None and image.transform is not None
    if georeferenced and not _overlaps(image, _bounds(header), label_crs or crs):
        found.append(
            (
                "overlap",
                f"{where}: label raster {pair.mask} does not overlap image {pair.image}",
            )
        )
    return found


def _aoi_problems(pair: SamplePair, image: RasterHeader, crs: CRS | None) -> list[Problem]:
    import shapely

    where = pair.where()
    assert pair.aoi is not None
    if not pair.aoi.is_file():
        return [("missing", f"{where}: AOI {pair.aoi} does not exist")]
    if crs is None:
        return [("crs", f"{where}: image {pair.image} has no CRS to place AOI {pair.aoi} on")]
    try:
        polygons = load_aoi(pair.aoi, crs)
    except DataError as error:
        return [("aoi", f"{where}: {error.problems[0]}")]
    scene = shapely.box(*_bounds(image))
    if not any(shapely.geometry.shape(polygon).intersects(scene) for polygon in polygons):
        return [("aoi", f"{where}: AOI {pair.aoi} does not overlap image {pair.image}")]
    return []
