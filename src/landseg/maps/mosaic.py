"""One map for a job's many rasters: ``DIR/mosaic.vrt`` and ``DIR/areas.csv``.

The mosaic is a GDAL VRT (an XML file naming each raster and where it lies), so QGIS and
GDAL open one layer over thousands of scenes without a byte of the rasters copied. It is
written here as XML (GDAL's Python bindings, which would build it with ``gdalbuildvrt``, are
not a dependency: rasterio has no VRT writer for mosaics). The rasters must share a CRS, a
pixel size and their bands; each is placed at its offset on the first raster's grid, nodata
and colour table kept, so that a scene's nodata never hides its neighbour's pixels.

``areas.csv`` counts each class of each class raster (read a block at a time): pixels, area
in map units squared, and hectares where the CRS is projected in metres (or feet, converted);
the last rows (scene ``total``) sum every scene, per CRS where the scenes lie on several
(:func:`write_areas`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows

from landseg.core.errors import LandsegError
from landseg.core.files import atomic_write_text

MOSAIC_FILE = "mosaic.vrt"
AREAS_FILE = "areas.csv"

_VRT_TYPES = {"uint8": "Byte", "float32": "Float32"}


def write_mosaic(folder: Path, rasters: Sequence[Path]) -> Path:
    """Write ``folder/mosaic.vrt`` over ``rasters`` (paths inside ``folder``); returns it."""
    if not rasters:
        raise LandsegError(f"{folder}: no finished prediction to make a mosaic of")
    infos = [grid_info(path) for path in sorted(rasters)]
    first = infos[0]
    for info in infos[1:]:
        problem = grid_mismatch(first, info)
        if problem:
            raise LandsegError(
                f"{info['path'].name}: {problem} than {first['path'].name}; a mosaic needs one "
                "CRS, pixel size and band layout (reproject the inputs onto one grid)"
            )
    res_x, res_y = first["transform"].a, first["transform"].e
    left = min(i["transform"].c for i in infos)
    top = (
        max(i["transform"].f for i in infos) if res_y < 0 else min(i["transform"].f for i in infos)
    )
    offsets = [((i["transform"].c - left) / res_x, (i["transform"].f - top) / res_y) for i in infos]
    width = max(round(x) + i["width"] for (x, _), i in zip(offsets, infos, strict=True))
    height = max(round(y) + i["height"] for (_, y), i in zip(offsets, infos, strict=True))

    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if first["crs"] is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = first["crs"].to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in (left, res_x, 0.0, top, 0.0, res_y)
    )
    nodata = first["nodata"]
    for band in range(1, first["count"] + 1):
        element = ET.SubElement(
            root, "VRTRasterBand", dataType=_VRT_TYPES[first["dtype"]], band=str(band)
        )
        if first["descriptions"][band - 1]:
            ET.SubElement(element, "Description").text = first["descriptions"][band - 1]
        if nodata is not None:
            ET.SubElement(element, "NoDataValue").text = _number(nodata)
        if band == 1 and first["colormap"]:
            ET.SubElement(element, "ColorInterp").text = "Palette"
            table = ET.SubElement(element, "ColorTable")
            for index in range(max(first["colormap"]) + 1):
                c = first["colormap"].get(index, (0, 0, 0, 0))
                ET.SubElement(
                    table, "Entry", c1=str(c[0]), c2=str(c[1]), c3=str(c[2]), c4=str(c[3])
                )
        for (x, y), info in zip(offsets, infos, strict=True):
            _source(element, folder, info, band, round(x), round(y), nodata)
    ET.indent(root)
    destination = Path(folder) / MOSAIC_FILE
    atomic_write_text(destination, ET.tostring(root, encoding="unicode") + "\n")
    return destination


def _source(
    band_element: ET.Element, folder: Path, info: dict[str, Any], band: int, x: int, y: int,
    nodata: float | None,
) -> None:  # fmt: skip
    kind = "ComplexSource" if nodata is not None else "SimpleSource"
    source = ET.SubElement(band_element, kind)
    name = ET.SubElement(source, "SourceFilename", relativeToVRT="1")
    name.text = str(Path(info["path"]).relative_to(folder))
    ET.SubElement(source, "SourceBand").text = str(band)
    w, h = str(info["width"]), str(info["height"])
    ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=w, ySize=h)
    ET.SubElement(source, "DstRect", xOff=str(x), yOff=str(y), xSize=w, ySize=h)
    if nodata is not None:
        ET.SubElement(source, "NODATA").text = _number(nodata)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value)).removesuffix(".0")


def grid_info(path: Path) -> dict[str, Any]:
    with rasterio.open(path) as src:
        try:
            colormap = src.colormap(1)
        except ValueError:
            colormap = None
        return {
            "path": Path(path),
            "crs": src.crs,
            "transform": src.transform,
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtype": src.dtypes[0],
            "nodata": src.nodata,
            "colormap": colormap,
            "descriptions": list(src.descriptions),
            "labels": src.tags().get("landseg_class_labels"),
            "type": src.tags().get("landseg_type"),
        }


def grid_mismatch(first: dict[str, Any], other: dict[str, Any], bands: bool = True) -> str | None:
    """Why ``other`` is not on ``first``'s pixel grid (or, with ``bands``, has other bands)."""
    if first["crs"] != other["crs"]:
        return "another CRS"
    a, b = first["transform"], other["transform"]
    if not (math.isclose(a.a, b.a) and math.isclose(a.e, b.e)) or a.b or a.d or b.b or b.d:
        return "another pixel size"
    x, y = (b.c - a.c) / a.a, (b.f - a.f) / a.e
    if abs(x - round(x)) > 1e-6 or abs(y - round(y)) > 1e-6:
        return "another pixel grid (not a whole number of pixels off)"
    if bands and (first["count"], first["dtype"]) != (other["count"], other["dtype"]):
        return "other bands"
    return None


def write_areas(folder: Path, rasters: Sequence[Path]) -> Path | None:
    """Write ``folder/areas.csv`` for the class rasters among ``rasters``; None when there is
    none (probability rasters have no classes to count).

    The total rows sum areas in one unit only: scenes on one CRS give rows ``total``; scenes
    on several CRSs (metres of two UTM zones, feet and metres...) give rows ``total <CRS>``
    for each, then rows ``total`` whose map-unit area is left empty (those units differ) and
    whose hectares sum every scene when every CRS is projected (hectares are one unit)."""
    rows: list[list[Any]] = []
    totals: dict[str, dict[int, list[float]]] = {}  # CRS -> class -> pixels, area, ha
    labels: list[str] = []
    hectares: dict[str, bool] = {}  # CRS -> every scene on it has hectares
    for path in sorted(rasters):
        with rasterio.open(path) as src:
            if src.tags().get("landseg_type") != "classes":
                continue
            labels = json.loads(src.tags().get("landseg_class_labels", "[]")) or labels
            counts = _class_counts(src)
            pixel = abs(src.transform.a * src.transform.e - src.transform.b * src.transform.d)
            to_m2 = _square_metres(src.crs)
            crs = _crs_name(src.crs)
        hectares[crs] = hectares.get(crs, True) and to_m2 is not None
        for class_id in range(len(labels)):
            area = counts[class_id] * pixel
            ha = area * to_m2 / 10_000 if to_m2 is not None else None
            rows.append([path.stem, class_id, labels[class_id], int(counts[class_id]),
                         _round(area), _round(ha)])  # fmt: skip
            total = totals.setdefault(crs, {}).setdefault(class_id, [0, 0.0, 0.0])
            total[0] += int(counts[class_id])
            total[1] += area
            total[2] += ha or 0.0
    if not rows:
        return None
    if len(totals) > 1:
        for crs, classes in sorted(totals.items()):
            for class_id, (pixels, area, ha) in sorted(classes.items()):
                rows.append([f"total {crs}", class_id, labels[class_id], pixels, _round(area),
                             _round(ha) if hectares[crs] else None])  # fmt: skip
    every_ha = all(hectares.values())
    for class_id in range(len(labels)):
        sums = [classes.get(class_id, [0, 0.0, 0.0]) for classes in totals.values()]
        area = _round(sum(s[1] for s in sums)) if len(totals) == 1 else None
        rows.append(["total", class_id, labels[class_id], sum(int(s[0]) for s in sums), area,
                     _round(sum(s[2] for s in sums)) if every_ha else None])  # fmt: skip
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["scene", "class_id", "class_name", "pixels", "area_map_units2", "area_ha"])
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    destination = Path(folder) / AREAS_FILE
    atomic_write_text(destination, text.getvalue())
    return destination


def _crs_name(crs: Any) -> str:
    """A CRS in a few characters: ``EPSG:2154``, else its PROJ or WKT text; ``no CRS``."""
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else str(crs.to_string())


def _class_counts(src: Any) -> np.ndarray:
    """Pixels of each value 0-255 of band 1, read a row of blocks at a time; a row of one
    value (nodata margins, an all-nodata scene) is counted without a histogram."""
    counts = np.zeros(256, dtype=np.int64)
    step = src.block_shapes[0][0]
    for first in range(0, src.height, step):
        window = rasterio.windows.Window(0, first, src.width, min(step, src.height - first))
        values = src.read(1, window=window)
        low = int(values.min())
        if low == values.max():
            counts[low] += values.size
        else:
            counts += np.bincount(values.ravel(), minlength=256)
    return counts


def _square_metres(crs: Any) -> float | None:
    """Square metres per square map unit of a projected CRS (None: geographic or unknown)."""
    if crs is None or not crs.is_projected:
        return None
    try:
        _, factor = crs.linear_units_factor
    except Exception:
        return None
    return float(factor) ** 2


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


MOSAIC_COG = "mosaic.tif"


def write_mosaic_cog(folder: Path, like: Path, destination: Path | None = None) -> Path:
    """Copy ``folder/mosaic.vrt`` into one COG with overviews (default ``folder/mosaic.tif``),
    in bounded memory: the mosaic is read a row of tiles at a time (GDAL resolves the scenes
    and their nodata) and written through :func:`landseg.maps.cog.cog_writer`, whose block
    cache is bounded too; memory grows with the mosaic's width, never its height. ``like``, one
    raster of the mosaic, gives the tags, colour table and band descriptions (a VRT has none of
    the tags) and whether the values are classes (overviews by nearest) or not (average)."""
    from landseg.maps.cog import cog_layout, cog_writer

    vrt = Path(folder) / MOSAIC_FILE
    if not vrt.is_file():
        raise LandsegError(f"{vrt}: no mosaic to copy (landseg predict --mosaic {folder} first)")
    destination = Path(destination) if destination is not None else Path(folder) / MOSAIC_COG
    with rasterio.open(like) as model:
        tags = model.tags()
        try:
            colormap = model.colormap(1)
        except ValueError:
            colormap = None
        descriptions = list(model.descriptions)
        photometric = model.photometric
    # probabilities (landseg's uint8 and float32 types) are averaged; classes and bits are not
    categorical = tags.get("landseg_type") not in ("float32", "uint8")
    with rasterio.open(vrt) as src:
        profile = {
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtype": src.dtypes[0],
            "nodata": src.nodata,
            "crs": src.crs,
            "transform": src.transform,
        }
        if photometric is not None and src.count in (1, 3):
            profile["photometric"] = photometric.name
        layout = cog_layout(src.dtypes[0], categorical=categorical)
        with cog_writer(destination, profile, layout) as writer:
            writer.dataset.update_tags(**tags)
            if colormap:
                writer.dataset.write_colormap(1, colormap)
            for band, text in enumerate(descriptions[: src.count], start=1):
                if text:
                    writer.dataset.set_band_description(band, text)
            step = layout.block
            for first in range(0, src.height, step):
                rows = min(step, src.height - first)
                window = rasterio.windows.Window(0, first, src.width, rows)
                writer.write_rows(first, src.read(window=window))
    return destination
