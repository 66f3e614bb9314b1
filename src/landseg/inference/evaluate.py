"""Scores of prediction rasters against masks, in the history format of training.

Predictions are matched to the rows of a masks CSV (``image,mask``) by file name: the
prediction of a row is ``<predictions>/<image stem>.tif`` (what ``landseg predict`` writes),
else ``<predictions>/<mask stem>.tif``. A one-band prediction holds class indices (255 or the
file's nodata: no prediction); a multi-band one holds per-class probabilities or bits, arg-maxed
(all bands nodata, or NaN: no prediction). Mask pixels without a class (nodata, all-zero
one-hot, ``ignore_index``, values beyond the classes) and pixels without a prediction count
nowhere, exactly as in training (:class:`~landseg.tasks.metrics.SegmentationMetrics`).

Files are read a strip of rows at a time, so scenes of any size are scored in bounded memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from landseg.core.errors import LandsegError
from landseg.data import raster
from landseg.data.csvfiles import SamplePair, read_pairs
from landseg.data.summary import IGNORE_INDEX
from landseg.tasks.metrics import HistoryValue, SegmentationMetrics, metrics_from_confusion

#: Rows read at once from a prediction and its mask.
STRIP_ROWS = 1024
#: Classes assumed while counting when nothing names them (uint8 class values); trimmed after.
MAX_CLASSES = 256
EVALUATION_FILE = "evaluation.json"
#: Columns of the score tables (report page, evaluate's summary), in order.
TABLE_METRICS = ("IoU", "F1-Score", "Precision", "Recall", "Accuracy")


@dataclass(frozen=True)
class MaskOptions:
    """How the run read its masks (``data_source.mask_bands`` and ``ignore_index``)."""

    bands: Sequence[int] | None = None
    ignore_index: int | None = None


def match_predictions(predictions: Path, pairs: Sequence[SamplePair]) -> list[tuple[Path, Path]]:
    """(prediction, mask) of every CSV row; one error naming the rows without a prediction."""
    predictions = Path(predictions)
    if not predictions.is_dir():
        raise LandsegError(f"{predictions}: predictions folder does not exist")
    matched, missing = [], []
    for pair in pairs:
        candidates = [
            predictions / f"{p.stem}{ext}"
            for p in (pair.image, pair.mask)
            for ext in (".tif", ".tiff")
        ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(pair)
        else:
            matched.append((found, pair.mask))
    if missing:
        first = missing[0]
        raise LandsegError(
            f"{first.where()}: no prediction {first.image.stem}.tif in {predictions} "
            f"({len(missing)} of {len(pairs)} rows have none)"
        )
    return matched


def labels_in_prediction(path: Path) -> list[str] | None:
    """The class names landseg wrote into a prediction (tags, or band descriptions)."""
    with raster.open_raster(path) as src:
        tag = src.tags().get("landseg_class_labels")
        if tag:
            try:
                labels = json.loads(tag)
            except ValueError:
                labels = None
            if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
                return labels
        if src.count > 1 and all(src.descriptions):
            return list(src.descriptions)
    return None


def decode_prediction(data: np.ndarray, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(class per pixel, has a prediction) from ``(bands, rows, W)`` prediction values."""
    missing = _missing(data, nodata)
    if data.shape[0] == 1:
        valid = ~missing[0]
        return np.where(valid, data[0], 0).astype(np.int64), valid
    scores = np.where(missing, -np.inf, data.astype(np.float32))
    return scores.argmax(axis=0).astype(np.int64), ~np.all(missing, axis=0)


def _missing(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """No-prediction values: NaN and nodata; 255 in a uint8 raster that sets no nodata."""
    known = nodata is not None and not math.isnan(nodata)
    if data.dtype.kind == "f":
        return np.isnan(data) | (data == nodata) if known else np.isnan(data)
    if known:
        return data == nodata
    if data.dtype == np.uint8:
        return data == 255
    return np.zeros(data.shape, dtype=bool)


def _mask_classes(
    values: np.ndarray, nodata: float | None, n: int, options: MaskOptions
) -> np.ndarray:
    """The rules of ``raster.read_mask``, applied to one strip of a mask."""
    if raster.mask_kind(values.shape[0]) == "index":
        return raster._index_classes(values[0], nodata, n, options.ignore_index)
    return raster._onehot_classes(values, nodata)


def _check_mask(src: Any, mask: Path, options: MaskOptions) -> list[int] | None:
    """The bands to read from a one-hot mask (None: all; index masks ignore mask_bands)."""
    if src.count == 1 or not options.bands:
        return None
    problem = raster.check_mask_bands(raster._header(src, mask), options.bands)
    if problem:
        raise LandsegError(problem)
    return list(options.bands)


def confusion_of(
    prediction: Path, mask: Path, n_classes: int, options: MaskOptions
) -> torch.Tensor:
    """The ``(n, n)`` confusion matrix of one prediction raster against its mask."""
    metrics = SegmentationMetrics(n_classes)
    with raster.open_raster(prediction) as pred, raster.open_raster(mask) as truth:
        if (pred.height, pred.width) != (truth.height, truth.width):
            raise LandsegError(
                f"{prediction} is {pred.width}x{pred.height} but mask {mask} is "
                f"{truth.width}x{truth.height}"
            )
        bands = _check_mask(truth, mask, options)
        for first in range(0, pred.height, STRIP_ROWS):
            window = Window(0, first, pred.width, min(STRIP_ROWS, pred.height - first))
            classes, valid = decode_prediction(pred.read(window=window), pred.nodata)
            target = _mask_classes(
                truth.read(bands, window=window), truth.nodata, n_classes, options
            )
            target[~valid] = IGNORE_INDEX
            try:
                metrics.update(torch.from_numpy(classes), torch.from_numpy(target))
            except ValueError as error:
                raise LandsegError(f"{prediction}: {error}") from error
    return metrics.compute()


def evaluate_predictions(
    predictions: Path,
    masks_csv: Path,
    class_labels: Sequence[str] | None = None,
    options: MaskOptions | None = None,
) -> dict[str, HistoryValue | str | int]:
    """Metrics of every prediction in ``predictions`` against the masks of ``masks_csv``.

    Classes: ``class_labels`` when given (a run's), else those written in the predictions,
    else one per band of multi-band predictions, else the class values found (``class 1``..).
    """
    options = options or MaskOptions()
    matched = match_predictions(predictions, read_pairs(masks_csv))
    labels = list(class_labels or labels_in_prediction(matched[0][0]) or [])
    if not labels:
        with raster.open_raster(matched[0][0]) as src:
            count = src.count
        n = count if count > 1 else MAX_CLASSES
    else:
        n = len(labels)
    confusion = sum(
        (confusion_of(pred, mask, n, options) for pred, mask in matched),
        torch.zeros(n, n, dtype=torch.long),
    )
    if not labels:
        used = np.flatnonzero(confusion.sum(0) + confusion.sum(1))
        n = int(used.max()) + 1 if used.size else 1
        confusion = confusion[:n, :n]
        labels = [f"class {i}" for i in range(1, n + 1)]
    entry: dict[str, Any] = metrics_from_confusion(confusion, labels)
    entry["pixels"] = int(confusion.sum())
    entry["files"] = len(matched)
    entry["predictions"] = str(Path(predictions).absolute())
    entry["masks"] = str(Path(masks_csv).absolute())
    return entry


def entry_labels(entry: Mapping[str, Any]) -> list[str]:
    """The class labels of a history entry, in order (its ``<label>/IoU`` keys)."""
    return [
        key[: -len("/IoU")]
        for key in entry
        if key.endswith("/IoU") and not key.startswith(("Overall/", "Average/"))
    ]
