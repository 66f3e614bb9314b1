"""Reading image and mask rasters with rasterio.

Every function opens the file and closes it before returning: no handle outlives a call, so
nothing is shared across the fork of a DataLoader worker.

Mask kinds (the rule :func:`mask_kind` applies, from the header and ``data_source.mask_bands``):

* a mask with **one band** is a class-index mask (value k = class k, 0-based). ``mask_bands``
  may be absent or ``[1]``; selecting more than one band of it is an error. Pixels equal to
  the mask's nodata, to ``data_source.ignore_index``, negative, or ``>= n_classes`` have no
  class and become :data:`IGNORE_INDEX`.
* a mask with **several bands** is one-hot (ODEON): band k = class k, restricted to
  ``mask_bands`` (default all bands) in that order, so the i-th selected band is class i. The
  class of a pixel is the argmax over the selected bands; a pixel whose selected bands are all
  0 (or all equal to the mask's nodata) has no class and becomes :data:`IGNORE_INDEX`, never
  class 0.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from landseg.core.errors import DataError
from landseg.data.summary import IGNORE_INDEX, MaskKind


@dataclass(frozen=True)
class RasterHeader:
    """What the checks need from a raster, read without touching its pixels."""

    path: Path
    count: int
    height: int
    width: int
    dtype: str
    nodata: float | None
    crs: str | None = None  # WKT; None without a CRS
    transform: tuple[float, ...] | None = None  # GDAL order; None without georeferencing

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def registration_problem(image: RasterHeader, mask: RasterHeader) -> str | None:
    """Why a mask does not lie on its image (another CRS, another grid), or None.

    Only where both say where they are: masks made by tools that drop the georeferencing are
    taken as the image's grid, as the pixels are read. Grids match when every term of the
    geotransforms agrees within 1 % of a pixel (float noise in origins written by other tools).
    """
    # the same WKT (nearly every pair) needs no parsing; equivalent WKTs written by other
    # tools are compared as CRSs
    if image.crs is not None and mask.crs is not None and image.crs != mask.crs:
        from rasterio.crs import CRS

        if CRS.from_wkt(image.crs) != CRS.from_wkt(mask.crs):
            return (
                f"mask {mask.path} is in {_crs_name(mask.crs)} but image {image.path} in "
                f"{_crs_name(image.crs)}: the labels would not lie on their pixels"
            )
    if image.transform is not None and mask.transform is not None:
        pixel = max(abs(image.transform[1]), abs(image.transform[5]), 1e-12)
        if any(
            abs(a - b) > 0.01 * pixel for a, b in zip(image.transform, mask.transform, strict=True)
        ):
            return (
                f"mask {mask.path} is not on the grid of image {image.path} (origin "
                f"{mask.transform[0]:.10g}, {mask.transform[3]:.10g} against "
                f"{image.transform[0]:.10g}, {image.transform[3]:.10g}; pixel "
                f"{mask.transform[1]:.10g} against {image.transform[1]:.10g}): the labels would "
                "not lie on their pixels"
            )
    return None


def _crs_name(wkt: str) -> str:
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_string() or "a custom CRS")


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.DatasetReader]:
    """Open ``path`` read-only; any rasterio failure becomes a DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                yield src
    except (RasterioError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read raster ({reason})") from err


def read_header(path: str | Path) -> RasterHeader:
    with open_raster(path) as src:
        return _header(src, path)


def _header(src: rasterio.DatasetReader, path: str | Path) -> RasterHeader:
    georeferenced = not src.transform.is_identity
    return RasterHeader(
        Path(path),
        src.count,
        src.height,
        src.width,
        src.dtypes[0],
        src.nodata,
        crs=src.crs.to_wkt() if src.crs else None,
        transform=tuple(src.transform.to_gdal()) if georeferenced else None,
    )


def mask_kind(band_count: int) -> MaskKind:
    """``index`` for a one-band mask, ``onehot`` otherwise (see the module docstring)."""
    return "index" if band_count == 1 else "onehot"


def check_mask_bands(header: RasterHeader, mask_bands: Sequence[int] | None) -> str | None:
    """The problem with ``mask_bands`` for this mask, or None; names the config key."""
    if mask_bands is None:
        return None
    if header.count == 1 and len(mask_bands) > 1:
        return (
            f"data_source.mask_bands: selects {len(mask_bands)} bands but mask {header.path} "
            "has 1 band (a single-band mask holds class indices; leave mask_bands out)"
        )
    return check_bands("data_source.mask_bands", mask_bands, header, "mask")


def check_bands(key: str, bands: Sequence[int], header: RasterHeader, what: str) -> str | None:
    """The problem with a 1-based band selection for this raster, or None."""
    beyond = [band for band in bands if band > header.count]
    if not beyond:
        return None
    plural = "" if header.count == 1 else "s"
    return f"{key}: band {max(beyond)} but {what} {header.path} has {header.count} band{plural}"


def read_image(path: str | Path, bands: Sequence[int] | None = None) -> np.ndarray:
    """The (C, H, W) pixels of ``bands`` (1-based; None = all), in the file's dtype."""
    return read_image_and_nodata(path, bands)[0]


def read_image_and_nodata(
    path: str | Path, bands: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_image` and the image's nodata pixels (see :func:`nodata_pixels`)."""
    with open_raster(path) as src:
        _raise(check_bands("data_source.image_bands", bands or (), _header(src, path), "image"))
        raw = src.read(list(bands) if bands else None)
        return raw, nodata_pixels(raw, src.nodata)


def nodata_pixels(raw: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """``(H, W)``: True where every band of ``raw`` equals ``nodata`` (NaN: is NaN).

    None when the raster declares no nodata. A pixel with only some bands at the nodata value
    is data (a dark pixel in one band is common); GDAL's dataset mask follows the same rule.
    """
    if nodata is None:
        return None
    missing = np.isnan(raw) if np.isnan(nodata) else raw == nodata
    return np.all(missing, axis=0)


def read_mask(
    path: str | Path,
    mask_bands: Sequence[int] | None,
    n_classes: int,
    ignore_index: int | None = None,
) -> np.ndarray:
    """The (H, W) int64 class of every pixel, :data:`IGNORE_INDEX` where there is none."""
    with open_raster(path) as src:
        _raise(check_mask_bands(_header(src, path), mask_bands))
        if mask_kind(src.count) == "index":
            return _index_classes(src.read(1), src.nodata, n_classes, ignore_index)
        return _onehot_classes(src.read(list(mask_bands) if mask_bands else None), src.nodata)


def index_mask_max(path: str | Path, ignore_index: int | None = None) -> int:
    """The largest class value of an index mask (-1 when it has none), to count classes."""
    with open_raster(path) as src:
        values = src.read(1)
        nodata = src.nodata
    labelled = _index_classes(values, nodata, None, ignore_index)
    return int(labelled.max(initial=IGNORE_INDEX))


def _raise(problem: str | None) -> None:
    if problem:
        raise DataError(problem)


def _index_classes(
    values: np.ndarray, nodata: float | None, n_classes: int | None, ignore_index: int | None
) -> np.ndarray:
    invalid = values < 0
    if n_classes is not None:
        invalid |= values >= n_classes
    if np.issubdtype(values.dtype, np.floating):
        invalid |= ~np.isfinite(values)
    if nodata is not None:
        invalid |= np.isnan(values) if np.isnan(nodata) else values == nodata
    if ignore_index is not None:
        invalid |= values == ignore_index
    classes = np.where(invalid, 0, values).astype(np.int64)
    classes[invalid] = IGNORE_INDEX
    return classes


def _onehot_classes(values: np.ndarray, nodata: float | None) -> np.ndarray:
    unlabelled = np.all(values == 0, axis=0)
    if nodata is not None:
        unlabelled |= np.all(values == nodata, axis=0)
    classes = np.argmax(values, axis=0).astype(np.int64)
    classes[unlabelled] = IGNORE_INDEX
    return classes
