"""How class predictions look: their colours, as a GeoTIFF colour table and a QGIS style.

This module is the one owner of a run's class colours: the COG colour table, the ``.qml``, the
metadata of ``landseg export`` and the report's sample tiles and legend all take them from
:func:`run_colors`. Colours come from ``output_setup.class_colors`` (one ``"#RRGGBB"`` per
class) or else from the default palette (:func:`landseg.loggers.figures.class_palette`):
matplotlib's qualitative ``tab10``, ``tab20b`` and ``tab20c`` colours in that order (60
colours, none black), then golden-angle hues for any further class. The nodata value (255) is
transparent.

One rule: ``class_colors`` whose count differs from the classes' is refused, never replaced by
the palette. ``landseg validate`` and ``train`` refuse it first, naming the key
(:func:`landseg.config.schema.output_class_problems`); a checkpoint written before that check
is refused by every reader here with the same line.

A class raster ``<stem>.tif`` gets a QGIS style ``<stem>.qml`` beside it: QGIS loads a layer's
same-named ``.qml`` as its default style, so the classes show with their names and colours (a
paletted renderer on band 1, nearest-neighbour resampling).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from landseg.config.schema import LandsegConfig
from landseg.core.errors import LandsegError
from landseg.core.files import atomic_write_text
from landseg.loggers.figures import class_palette

#: Nodata of class rasters: no colour-table entry of its own but transparent.
NODATA = 255
#: The QGIS version a style is written for (QGIS reads older styles; 3.16 is an old LTR).
QGIS_VERSION = "3.16.0-Hannover"
#: Marks a .qml as landseg's, so an outdated one may be replaced or removed.
MARK = "written by landseg"

RGBA = tuple[int, int, int, int]


def hex_colour(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` -> ``"#rrggbb"``."""
    r, g, b = (int(v) for v in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def rgb(colour: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` -> ``(r, g, b)``."""
    value = colour.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"not a #RRGGBB colour: {colour}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def default_colors(n_classes: int) -> list[str]:
    """The default palette's first ``n_classes`` colours, as ``"#rrggbb"``."""
    return [hex_colour(c) for c in class_palette(n_classes)]


def class_colors(n_classes: int, colors: Sequence[str] | None = None) -> list[str]:
    """The classes' colours: ``colors`` (``class_colors``) when given, else the default palette."""
    if colors is None:
        return default_colors(n_classes)
    if len(colors) != n_classes:
        raise LandsegError(
            f"output_setup.class_colors: {len(colors)} colour(s) for {n_classes} classes; "
            "give one per class, or leave it out for the default palette"
        )
    return [hex_colour(rgb(c)) for c in colors]


def run_colors(config: LandsegConfig, n_classes: int) -> list[str]:
    """The colours of a run's ``n_classes`` classes, from its config (see the module's rule)."""
    return class_colors(n_classes, config.output_setup.class_colors)


def rgb_palette(colors: Sequence[str]) -> np.ndarray:
    """``"#rrggbb"`` colours as the ``(n, 3)`` uint8 array figures paint with."""
    return np.array([rgb(c) for c in colors], dtype=np.uint8).reshape(len(colors), 3)


def colormap(colors: Sequence[str]) -> dict[int, RGBA]:
    """A GeoTIFF colour table: class ``i`` has ``colors[i]``, opaque; nodata is transparent."""
    table: dict[int, RGBA] = {i: (*rgb(c), 255) for i, c in enumerate(colors)}
    table[NODATA] = (0, 0, 0, 0)
    return table


def qml_text(labels: Sequence[str], colors: Sequence[str]) -> str:
    """A QGIS style: paletted renderer on band 1, one entry (value, colour, label) per class."""
    if len(labels) != len(colors):
        raise ValueError(f"{len(labels)} labels but {len(colors)} colours")
    root = ET.Element(
        "qgis",
        {
            "version": QGIS_VERSION,
            "styleCategories": "AllStyleCategories",
            "hasScaleBasedVisibilityFlag": "0",
            "minScale": "1e+08",
            "maxScale": "0",
        },
    )
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        {
            "enabled": "false",
            "maxOversampling": "2",
            "zoomedInResamplingMethod": "nearestNeighbour",
            "zoomedOutResamplingMethod": "nearestNeighbour",
        },
    )
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {
            "type": "paletted",
            "band": "1",
            "opacity": "1",
            "alphaBand": "-1",
            "nodataColor": "",
        },
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, (label, colour) in enumerate(zip(labels, colors, strict=True)):
        ET.SubElement(
            palette,
            "paletteEntry",
            {
                "value": str(value),
                "color": hex_colour(rgb(colour)),
                "label": str(label),
                "alpha": "255",
            },
        )
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(
        pipe,
        "huesaturation",
        {
            "saturation": "0",
            "grayscaleMode": "0",
            "colorizeOn": "0",
            "colorizeRed": "255",
            "colorizeGreen": "128",
            "colorizeBlue": "128",
            "colorizeStrength": "100",
            "invertColors": "0",
        },
    )
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n<!-- {MARK} -->\n{body}\n"


def style_path(raster: Path) -> Path:
    """``DIR/<stem>.tif`` -> ``DIR/<stem>.qml``, the style QGIS loads with the raster."""
    return Path(raster).with_suffix(".qml")


def write_qml(raster: Path, labels: Sequence[str], colors: Sequence[str]) -> Path:
    """Write the class raster's QGIS style beside it (atomically); return its path."""
    path = style_path(raster)
    atomic_write_text(path, qml_text(labels, colors))
    return path


def remove_stale_style(raster: Path) -> None:
    """Remove a landseg ``.qml`` left beside ``raster`` by an earlier class prediction.

    QGIS would apply it to whatever raster now holds the name (a paletted style on a
    probability band). A ``.qml`` that landseg did not write is left alone.
    """
    path = style_path(raster)
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:200]
    except OSError:
        return
    if MARK in head:
        path.unlink(missing_ok=True)
