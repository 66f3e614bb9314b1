"""``landseg evaluate --run RUN --csv CSV`` on scene rows: metrics over a grid of windows.

With ``data_source.windows`` in the run's config, every row of the CSV is a scene
(``image,labels[,aoi]``, docs/scenes.md). Each scene is cut into the validation grid
(:func:`landseg.data.scenes.grid_windows`): windows of the run's ``windows.size`` every
``windows.stride`` pixels from the top-left pixel, a last one flush with the far edge; or, with
``--tile T [--overlap O]``, windows of ``T`` every ``T - O`` pixels (``O`` default 0). Each
window is predicted in one forward pass, exactly as ``landseg predict`` predicts a tile of that
size, and compared with the window's labels as training reads them
(:class:`~landseg.data.scenes.WindowReader`: vector or raster labels, the AOI, image nodata).

Where windows overlap, a pixel counts in the first window (row by row) that covers it only, as
in validation: every labelled pixel of a scene counts once. So the metrics equal those of
``landseg evaluate`` on the tiles ``landseg tiles`` cuts on the same grid (predicted with a
``--tile`` at least the window size). No prediction raster is written: the windows' predictions
are not a map (``landseg predict`` writes the blended map of a scene).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from landseg.core.errors import DataError, LandsegError
from landseg.data.csvfiles import read_pairs
from landseg.data.raster import open_raster
from landseg.data.scenes import (
    LabelSettings,
    Scene,
    WindowPair,
    WindowReader,
    grid_windows,
    read_scene,
)
from landseg.inference.scene import Normalization, Tiling, model_bands
from landseg.tasks.metrics import SegmentationMetrics, metrics_from_confusion


@dataclass(frozen=True)
class SceneGrid:
    """The evaluation grid: windows of ``size`` every ``stride`` pixels, ``batch_size`` a pass."""

    size: int
    stride: int
    batch_size: int = 8

    @classmethod
    def of(cls, config: Any, tile: int | None, overlap: int | None, batch_size: int) -> SceneGrid:
        """The run's ``windows`` grid, or ``--tile``/``--overlap`` (overlap 0 by default)."""
        windows = config.data_source.windows
        if tile is None and overlap is not None:
            tile = windows.size
        if tile is None:
            return cls(windows.size, windows.step, batch_size)
        Tiling(tile, overlap or 0, batch_size)  # the same bounds as prediction's
        return cls(tile, tile - (overlap or 0), batch_size)


def label_settings_of(model: Any) -> LabelSettings:
    """How the run turned labels into classes: its ``data_source`` keys and class labels."""
    source = model.config.data_source
    return LabelSettings(
        image_bands=source.image_bands,
        mask_bands=source.mask_bands,
        n_classes=model.n_classes,
        class_labels=list(model.class_labels),
        ignore_index=source.ignore_index,
        label_field=source.label_field,
        label_layer=source.label_layer,
        background=source.label_background,
        all_touched=source.label_all_touched,
    )


def scenes_of(csv: Path, size: int) -> list[Scene]:
    """The scene rows of ``csv``; one error naming every row smaller than a window."""
    scenes = [read_scene(pair) for pair in read_pairs(csv)]
    small = [
        f"{scene.pair.where()}: scene {scene.width}x{scene.height} is smaller than a window "
        f"of {size} px (give a smaller --tile)"
        for scene in scenes
        if scene.height < size or scene.width < size
    ]
    if small:
        raise DataError(small)
    return scenes


def _window_batches(windows: Sequence[WindowPair], batch_size: int) -> Iterator[list[WindowPair]]:
    for start in range(0, len(windows), batch_size):
        yield list(windows[start : start + batch_size])


def _model_input(model: Any, pair: WindowPair, pixel_range: float | None) -> np.ndarray:
    """A window's normalised pixels as predict reads a tile: the raw values, nodata included
    (its pixels are not labelled: the reader's targets ignore them), scaled by the run's rule
    for the scene's dtype."""
    row, col, height, width = pair.window
    with open_raster(pair.image) as src:
        raw = src.read(model_bands(model, src), window=Window(col, row, width, height))
        normalize = Normalization.for_raster(model.config, src.dtypes[0], pair.image, pixel_range)
        return normalize(raw)


def evaluate_scene_rows(
    model: Any, csv: Path, grid: SceneGrid, pixel_range: float | None = None
) -> dict[str, Any]:
    """The metrics (history format) of ``model`` over the labelled pixels of ``csv``'s scenes."""
    Tiling(grid.size, 0, grid.batch_size).check_model(model)
    scenes = scenes_of(csv, grid.size)
    windows = grid_windows(scenes, grid.size, grid.stride)
    reader = WindowReader(label_settings_of(model))
    metrics = SegmentationMetrics(model.n_classes)
    for batch in _window_batches(windows, grid.batch_size):
        inputs = [_model_input(model, pair, pixel_range) for pair in batch]
        probs = model.tile_probabilities(np.stack(inputs), grid.batch_size)
        for pair, prob in zip(batch, probs, strict=True):
            target = reader.read(pair)[1]
            classes = torch.from_numpy(prob.argmax(axis=0).astype(np.int64))
            try:
                metrics.update(classes, torch.from_numpy(target))
            except ValueError as error:
                raise LandsegError(f"{pair.where()}: {error}") from error
    confusion = metrics.compute()
    entry: dict[str, Any] = metrics_from_confusion(confusion, list(model.class_labels))
    entry["pixels"] = int(confusion.sum())
    entry["files"] = len(scenes)
    entry["windows"] = len(windows)
    entry["window"] = grid.size
    entry["stride"] = grid.stride
    entry["masks"] = str(Path(csv).absolute())
    return entry
