"""Whole scenes as training data: windows read from rows ``image,labels[,aoi]``.

The rule (docs/scenes.md): with ``data_source.windows`` set, **every** row of the CSV files is
a scene; without it every row is a tile, as in ODEON. A tile is just a scene the size of one
window, so tiles and scenes mix freely in one CSV. ``labels`` is a label raster or a vector
file (:mod:`landseg.data.labels`), ``aoi`` an optional polygon file: the column named ``aoi``
in a header, or else the third column.

* **Training** without ``samples_per_epoch`` reads the grid below, each window once per epoch
  in the sampler's shuffled order: exactly what training on tiles cut on that grid does.
* **Training** with it draws ``samples_per_epoch`` windows per epoch (:class:`RandomWindows`): the
  window of sample ``i`` of epoch ``e`` comes from a generator seeded with the sample's own
  seed (:func:`~landseg.data.sampler.derive_seed` of the run's seed, ``e`` and ``i``), so it
  is a pure function of those three, and exact mid-epoch resume and ``--workers`` equality
  hold as for tiles. A scene is chosen in proportion to its window positions, then a
  position uniformly; a window with more than ``max_nodata`` of its pixels outside the AOI
  or at the image's nodata is drawn again, at most :data:`MAX_TRIES` times (the last one is
  kept, its invalid pixels unlabelled). Random windows are never cached: each is new.
* **Validation and test** read a fixed grid (:func:`grid_windows`): windows of ``size`` every
  ``stride`` pixels from each scene's top-left pixel, and a last window flush with the far
  edge where a remainder is left. Where windows overlap, a pixel belongs to the first window
  (row by row) that covers it; in later windows it is not labelled, so every labelled pixel
  counts exactly once in the metrics and the confusion matrix. Grid windows are cached like
  tiles, keyed by scene and window.

A row of a cross-validation task may carry a ``windows`` cell
(:mod:`landseg.data.scene_limits`): its grid is then only the windows listed there, and no
random window is drawn in the areas it keeps out (the task's test blocks and their buffer).

Only windows are read, never a whole scene; a scene stored in strips (not internally tiled)
gets a one-time warning, since each window then decodes whole rows of the scene.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from landseg.config.schema import LandsegConfig
from landseg.core.errors import DataError
from landseg.data.cache import Decoded
from landseg.data.csvfiles import SamplePair
from landseg.data.dataset import SegmentationDataset
from landseg.data.labels import (
    VectorLabels,
    aoi_inside,
    background_class,
    burn_labels,
    is_vector,
    load_aoi,
    load_vector_labels,
    read_label_window,
)
from landseg.data.raster import nodata_pixels, open_raster
from landseg.data.scene_limits import MAX_KEEP_OUT_TRIES, WindowLimits, limits_of, window_bounds
from landseg.data.summary import IGNORE_INDEX, DataSummary

log = logging.getLogger("landseg.data")

#: Random windows drawn for one sample before the last one is kept whatever its nodata.
MAX_TRIES = 50
#: The stream of a sample's seed that places its window (its augmentation uses the seed itself).
WINDOW_STREAM = 0x5CE7E
#: A scene wider than this and stored in strips gets the slow-read warning.
STRIP_WARNING_WIDTH = 1024
_warned: set[Path] = set()


@dataclass(frozen=True)
class WindowPair(SamplePair):
    """One window of a scene row: ``window`` is (row, col, height, width) in scene pixels.

    ``owned`` is the (row, col) inside the window from which its pixels are its own: above
    and left of it, an earlier grid window covered them, so they are not labelled here.
    """

    window: tuple[int, int, int, int] = (0, 0, 0, 0)
    owned: tuple[int, int] = (0, 0)

    def cache_text(self) -> str:
        """What keys a cached window: the scene's files, the window and what it owns."""
        return f"{super().cache_text()}\n{self.aoi}\n{self.window}\n{self.owned}"

    def sources(self) -> list[Path]:
        return [*super().sources(), *([self.aoi] if self.aoi else [])]

    def where(self) -> str:
        row, col, height, width = self.window
        return f"{super().where()}, window {width}x{height} at col {col}, row {row}"


@dataclass(frozen=True)
class Scene:
    """A scene row and what its image's header says (read once, in the main process)."""

    pair: SamplePair
    aoi: Path | None
    height: int
    width: int
    count: int
    dtype: str
    transform: Affine
    crs: CRS | None = field(compare=False)
    tiled: bool
    #: the row's ``windows`` cell (cross-validation, :mod:`landseg.data.scene_limits`)
    limits: WindowLimits | None = field(default=None, compare=False)

    def window(self, row: int, col: int, size: int, owned: tuple[int, int] = (0, 0)) -> WindowPair:
        pair = self.pair
        return WindowPair(
            pair.image,
            pair.mask,
            pair.row,
            pair.extra,
            pair.csv,
            aoi=self.aoi,
            window=(row, col, size, size),
            owned=owned,
        )

    def positions(self, size: int) -> int:
        """How many windows of ``size`` fit at distinct pixel offsets (0 when none fits)."""
        return max(0, self.height - size + 1) * max(0, self.width - size + 1)


def read_scene(pair: SamplePair) -> Scene:
    """The scene of ``pair`` from its image header; warns once about a scene in strips."""
    with open_raster(pair.image) as src:
        _, block_width = src.block_shapes[0]
        tiled = block_width < src.width or src.width <= STRIP_WARNING_WIDTH
        scene = Scene(
            pair,
            pair.aoi,
            src.height,
            src.width,
            src.count,
            src.dtypes[0],
            src.transform,
            src.crs,
            tiled,
            limits_of(pair),
        )
    if not tiled and pair.image not in _warned:
        _warned.add(pair.image)
        log.warning(
            "%s is stored in strips, not internally tiled: every window decodes whole rows of "
            "it, which is slow; convert it once with `gdal_translate -of COG %s out.tif`",
            pair.image,
            pair.image,
        )
    return scene


def grid_offsets(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` from 0, then one flush with the end."""
    if length < size:
        raise ValueError(f"a window of {size} does not fit in {length} pixels")
    offsets = list(range(0, length - size + 1, stride))
    if offsets[-1] + size < length:
        offsets.append(length - size)
    return offsets


def _owned_from(offsets: Sequence[int], size: int) -> list[int]:
    """Per window along one axis: the first of its pixels no earlier window covers."""
    return [0] + [max(0, prev + size - start) for prev, start in itertools.pairwise(offsets)]


def grid_windows(scenes: Sequence[Scene], size: int, stride: int) -> list[WindowPair]:
    """The validation/test grid of every scene, scene by scene, row by row."""
    windows: list[WindowPair] = []
    for scene in scenes:
        rows, cols = (
            grid_offsets(scene.height, size, stride),
            grid_offsets(scene.width, size, stride),
        )
        row_owned, col_owned = _owned_from(rows, size), _owned_from(cols, size)
        for row, top in zip(rows, row_owned, strict=True):
            for col, left in zip(cols, col_owned, strict=True):
                limits = scene.limits  # a cv split reads its own windows only; each keeps
                if limits is None or limits.grid is None or (row, col) in limits.grid:  # its pixels
                    windows.append(scene.window(row, col, size, (top, left)))
    return windows


@dataclass
class LabelSettings:
    """How labels become classes (the ``data_source`` keys of :mod:`landseg.data.labels`)."""

    image_bands: Sequence[int] | None
    mask_bands: Sequence[int] | None
    n_classes: int
    class_labels: Sequence[str]
    ignore_index: int | None = None
    label_field: str | None = None
    label_layer: str | None = None
    background: str | int = "ignore"
    all_touched: bool = False


class WindowReader:
    """Reads a window's image, classes and invalid pixels, keeping polygons per process.

    The polygons of label and AOI files are read and reprojected once per process and CRS;
    they are dropped when the reader is pickled (to a worker), which reads them itself.
    """

    def __init__(self, settings: LabelSettings):
        self.settings = settings
        self._vectors: dict[tuple[Path, str], VectorLabels] = {}
        self._aois: dict[tuple[Path, str], tuple[dict[str, Any], ...]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "_vectors": {}, "_aois": {}}

    def aoi(self, path: Path, crs: CRS | None) -> tuple[dict[str, Any], ...]:
        key = (path, crs.to_wkt() if crs else "")
        if key not in self._aois:
            if crs is None:
                raise DataError(f"{path}: an AOI needs an image with a CRS to be placed on")
            self._aois[key] = load_aoi(path, crs)
        return self._aois[key]

    def vector(self, path: Path, crs: CRS | None) -> VectorLabels:
        key = (path, crs.to_wkt() if crs else "")
        if key not in self._vectors:
            if crs is None:
                raise DataError(f"{path}: vector labels need an image with a CRS to be burnt on")
            s = self.settings
            self._vectors[key] = load_vector_labels(
                path,
                crs,
                field=s.label_field,
                layer=s.label_layer,
                class_labels=s.class_labels,
                n_classes=s.n_classes,
            )
        return self._vectors[key]

    def outside_aoi(
        self, aoi: Path | None, crs: CRS | None, transform: Affine, shape: tuple[int, int]
    ) -> np.ndarray | None:
        """(H, W) True outside the AOI, or None without one."""
        if aoi is None:
            return None
        return ~aoi_inside(self.aoi(aoi, crs), transform, shape)

    def read(self, pair: WindowPair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image in its dtype with nodata set to 0, int64 classes, invalid pixels).

        Invalid pixels (image nodata, outside the AOI) are not labelled; neither are the
        pixels an earlier grid window owns (``pair.owned``), which are still valid.
        """
        s = self.settings
        row, col, height, width = pair.window
        shape = (height, width)
        with open_raster(pair.image) as src:
            beyond = [band for band in s.image_bands or () if band > src.count]
            if beyond:
                raise DataError(
                    f"data_source.image_bands: band {max(beyond)} but image {pair.image} has "
                    f"{src.count} bands"
                )
            bands = list(s.image_bands) if s.image_bands else None
            raw = src.read(bands, window=Window(col, row, width, height))
            missing = nodata_pixels(raw, src.nodata)
            crs = src.crs
            transform = src.transform @ Affine.translation(col, row)
        if raw.shape[1:] != shape:
            raise DataError(f"{pair.where()}: the window does not fit in image {pair.image}")
        finite = raw[:, ~missing] if missing is not None else raw
        if raw.dtype.kind == "f" and not np.isfinite(finite).all():
            raise DataError(f"{pair.image}: image has NaN or infinite pixels ({pair.where()})")
        if is_vector(pair.mask):
            background = background_class(s.background, s.class_labels, s.n_classes)
            mask = burn_labels(
                self.vector(pair.mask, crs),
                transform,
                shape,
                background=background,
                all_touched=s.all_touched,
            )
        else:
            mask = read_label_window(
                pair.mask,
                crs,
                transform,
                shape,
                mask_bands=s.mask_bands,
                n_classes=s.n_classes,
                ignore_index=s.ignore_index,
            )
        invalid = np.zeros(shape, dtype=bool)
        if missing is not None:
            invalid |= missing
            raw[:, missing] = 0
        outside = self.outside_aoi(pair.aoi, crs, transform, shape)
        if outside is not None:
            invalid |= outside
        mask[invalid] = IGNORE_INDEX
        top, left = pair.owned
        mask[:top, :] = IGNORE_INDEX
        mask[:, :left] = IGNORE_INDEX
        return raw, mask, invalid


class RandomWindows:
    """Training windows drawn from a sample's seed alone (see the module docstring)."""

    def __init__(self, scenes: Sequence[Scene], size: int, max_nodata: float):
        self.scenes = [scene for scene in scenes if scene.positions(size) > 0]
        if not self.scenes:
            raise DataError(f"data_source.windows.size: {size} is larger than every scene")
        self.size = size
        self.max_nodata = max_nodata
        self.cumulative = np.cumsum([scene.positions(size) for scene in self.scenes])

    def propose(self, rng: np.random.Generator) -> tuple[Scene, WindowPair]:
        """One window: a scene in proportion to its positions, then a position uniformly.

        A window in a scene's kept-out area (:mod:`landseg.data.scene_limits`) is drawn again.
        """
        for _ in range(MAX_KEEP_OUT_TRIES):
            pick = int(rng.integers(int(self.cumulative[-1])))
            scene = self.scenes[int(np.searchsorted(self.cumulative, pick, side="right"))]
            row = int(rng.integers(scene.height - self.size + 1))
            col = int(rng.integers(scene.width - self.size + 1))
            limits = scene.limits
            if limits is None or limits.allows(
                window_bounds(scene.transform, row, col, self.size, self.size)
            ):
                return scene, scene.window(row, col, self.size)
        raise DataError(
            f"data_source.windows.size: {MAX_KEEP_OUT_TRIES} random windows of {self.size} px "
            "all fell in the areas this task keeps out of training (its test blocks and "
            "buffer); use smaller windows, a smaller buffer or larger blocks"
        )

    def draw(self, sample_seed: int, reader: WindowReader) -> tuple[WindowPair, Decoded]:
        """The window of the sample with this seed and its pixels (a pure function of the seed)."""
        rng = np.random.default_rng(np.random.SeedSequence([sample_seed, WINDOW_STREAM]))
        limit = self.max_nodata * self.size * self.size
        for attempt in range(MAX_TRIES):
            scene, pair = self.propose(rng)
            last = attempt == MAX_TRIES - 1
            row, col, _, _ = pair.window
            transform = scene.transform @ Affine.translation(col, row)
            outside = reader.outside_aoi(pair.aoi, scene.crs, transform, (self.size, self.size))
            if not last and outside is not None and outside.sum() > limit:
                continue  # mostly outside the AOI: rejected before any pixel is read
            raw, mask, invalid = reader.read(pair)
            if last or invalid.sum() <= limit:
                return pair, (raw, mask)
        raise AssertionError("unreachable: the last try is always kept")


class SceneDataset(SegmentationDataset):
    """:class:`SegmentationDataset` over scene windows: a grid, or random training windows.

    With ``random`` the dataset has ``samples`` items, each drawn from its sample seed
    (:meth:`RandomWindows.draw`) and never cached; otherwise its items are ``pairs``, the
    grid's windows.
    """

    def __init__(
        self,
        pairs: Sequence[SamplePair],
        *,
        reader: WindowReader,
        random: RandomWindows | None = None,
        samples: int = 0,
        **options: Any,
    ):
        super().__init__(pairs, **options)
        self.reader = reader
        self.random = random
        self.samples = samples

    def __len__(self) -> int:
        return self.samples if self.random is not None else len(self.pairs)

    def sample_decoded(self, index: int, sample_seed: int) -> Decoded:
        if self.random is not None:
            return self.random.draw(sample_seed, self.reader)[1]
        return self.decoded(index)

    def decode(self, pair: SamplePair) -> Decoded:
        if not isinstance(pair, WindowPair):
            return super().decode(pair)
        raw, mask, _ = self.reader.read(pair)
        return raw, mask


def label_settings(config: LandsegConfig, summary: DataSummary) -> LabelSettings:
    """The label settings of a config whose data checks gave ``summary``."""
    source = config.data_source
    return LabelSettings(
        image_bands=source.image_bands,
        mask_bands=source.mask_bands,
        n_classes=summary.n_classes,
        class_labels=summary.class_labels,
        ignore_index=source.ignore_index,
        label_field=source.label_field,
        label_layer=source.label_layer,
        background=source.label_background,
        all_touched=source.label_all_touched,
    )


def scene_dataset(
    pairs: Sequence[SamplePair],
    *,
    size: int,
    stride: int,
    samples_per_epoch: int | None,
    max_nodata: float,
    settings: LabelSettings,
    scenes: Callable[[SamplePair], Scene] = read_scene,
    **options: Any,
) -> SceneDataset:
    """A grid dataset of ``pairs`` (``samples_per_epoch`` None) or a random-window one."""
    found = [scenes(pair) for pair in pairs]
    reader = WindowReader(settings)
    if samples_per_epoch is None:
        return SceneDataset(grid_windows(found, size, stride), reader=reader, **options)
    random = RandomWindows(found, size, max_nodata)
    return SceneDataset(
        list(pairs), reader=reader, random=random, samples=samples_per_epoch, **options
    )
