"""An area of interest (``landseg predict --aoi FILE``): polygons outside which nothing is
predicted.

The polygons are read once (any vector file GDAL reads: GeoPackage, Shapefile, GeoJSON...,
its first layer), reprojected to each scene's CRS, and rasterised a strip of rows at a time
(``rasterio.features.geometry_mask``: a pixel is inside when its centre is), so the memory of a
prediction stays one strip whatever the scene's size. Pixels outside are nodata; tiles wholly
outside are never sent through the model, and a scene whose bounds do not meet the polygons'
is not even read (:meth:`AreaOfInterest.touches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landseg.core.errors import LandsegError


@dataclass(frozen=True)
class AreaOfInterest:
    """The polygons of ``path`` (GeoJSON-like mappings) in their CRS."""

    path: Path
    geometries: tuple[dict[str, Any], ...]
    crs: Any  # rasterio.crs.CRS

    @classmethod
    def read(cls, path: Path) -> AreaOfInterest:
        """Read ``path``'s polygons; refused (one line naming the file) when it is missing,
        unreadable, has no CRS or no polygon."""
        import pyogrio.raw
        import shapely
        from rasterio.crs import CRS

        path = Path(path)
        if not path.is_file():
            raise LandsegError(f"--aoi {path}: file not found")
        try:
            meta, _, geometry, _ = pyogrio.raw.read(path, read_geometry=True, columns=[])
        except Exception as error:
            raise LandsegError(f"--aoi {path}: not a vector file GDAL reads ({error})") from error
        if not meta.get("crs"):
            raise LandsegError(f"--aoi {path}: the file has no CRS; give its polygons one")
        shapes = [g for g in shapely.from_wkb(geometry) if g is not None and not g.is_empty]
        polygons = [g for g in shapes if g.geom_type in ("Polygon", "MultiPolygon")]
        if not polygons:
            raise LandsegError(f"--aoi {path}: holds no polygon")
        mappings = tuple(shapely.geometry.mapping(g) for g in polygons)
        return cls(path, mappings, CRS.from_user_input(meta["crs"]))

    def on(self, src: Any) -> SceneArea:
        """The polygons in the CRS of the open raster ``src``."""
        from rasterio.warp import transform_geom

        if src.crs is None:
            raise LandsegError(f"--aoi: {src.name} has no CRS to place the polygons on")
        geometries = (
            list(self.geometries)
            if src.crs == self.crs
            else [transform_geom(self.crs, src.crs, g) for g in self.geometries]
        )
        return SceneArea(geometries, src.transform, src.width, src.bounds)


@dataclass(frozen=True)
class SceneArea:
    """An area of interest on one scene's grid."""

    geometries: list[dict[str, Any]]
    transform: Any
    width: int
    bounds: Any

    def touches(self) -> bool:
        """Whether the polygons' bounds meet the scene's (False: nothing to predict)."""
        import shapely

        box = shapely.box(*self.bounds)
        return any(box.intersects(shapely.geometry.shape(g)) for g in self.geometries)

    def inside(self, first: int, stop: int) -> np.ndarray:
        """``(rows, width)`` bool: the pixels of rows ``[first, stop)`` inside the polygons."""
        from rasterio.features import geometry_mask
        from rasterio.transform import Affine

        window = self.transform @ Affine.translation(0, first)
        mask: np.ndarray = geometry_mask(
            self.geometries, out_shape=(stop - first, self.width), transform=window, invert=True
        )
        return mask
