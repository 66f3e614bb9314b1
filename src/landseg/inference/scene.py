"""Whole-scene prediction: overlapping tiles, blended, read and written a strip of rows at a time.

How a scene is cut. Tiles of ``tile`` pixels step by ``stride = tile - overlap``; their origins
lie on a grid of multiples of the stride **anchored to the CRS's pixel grid** (the pixel that
holds the CRS origin), not to the scene's corner. Every grid tile that fits inside the scene is
predicted, and where the grid leaves a margin at an edge, one tile flush with that edge covers
it (the sliding window a hand-written loop uses, with the interior on the CRS grid): no tile
reaches outside the scene, so no pixels are invented by padding and a scene costs about as many
tiles as a hand-written loop's. Each tile's
per-class probabilities are weighted by a 2D Hann window with a small floor (the weights fall
to ~0 at the tile border, so no tile edge shows) and the weighted sums are divided by the summed
weights.

Why shifted scenes agree. Two rasters on the same pixel grid (a scene and any crop of it, at
any pixel offset) therefore get the *same* tiles over their common area: the same pixels go
into the model and the same weights blend them. Their probabilities are equal wherever every
tile covering a pixel lies inside both rasters, i.e. at least ``tile`` pixels from either
raster's edge; nearer an edge, the tiles flush with each raster's edge differ. This holds for
a model in eval mode (batch norm uses its running statistics, dropout is off), up to float
rounding (~1e-6), which batching differently may change. A raster without georeferencing
(identity transform) anchors the grid at its own first pixel.

A scene that fits in one tile is predicted in one pass, padded (by reflection) to the model's
size multiple only, as the training tiles were. Memory: one strip of ``tile`` rows of the full
width for the input and the accumulated probabilities, whatever the scene's height.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from landseg.config.choices import OUTPUT_TYPES
from landseg.config.schema import LandsegConfig, SplitStats
from landseg.core.errors import DataError, LandsegError, StopRequested
from landseg.core.files import folder_problem
from landseg.core.registry import Registry, check_implements, unknown_name_message
from landseg.core.signals import signal_name
from landseg.data.normalization import resolve_pixel_range, scale, standardize
from landseg.data.raster import nodata_pixels, open_raster
from landseg.inference.tta import TTAModel
from landseg.maps.cog import CogLayout, cog_layout, cog_writer, resumable_cog_writer
from landseg.maps.style import colormap, remove_stale_style, run_colors, write_qml
from landseg.models.registry import model_size_multiple
from landseg.runs.checkpoints import (
    WeightsMismatchError,
    checkpoint_error_line,
    load_checkpoint,
    load_weights,
)

#: Nodata of class and uint8/bit outputs (uint8 probabilities are capped at 254 to keep it free).
NODATA_UINT8 = 255
#: Lowest blending weight, relative to a tile's centre: keeps every weight sum positive.
WEIGHT_FLOOR = 1e-3
#: Rows read at a time from a piece's staging file when a scene is assembled (a COG tile row).
ASSEMBLY_ROWS = 256
#: Raster files a folder input is searched for.
RASTER_SUFFIXES = (".tif", ".tiff")

#: ``read_rows(first, stop) -> (normalised (C, rows, W) float32, valid (rows, W) bool or None)``.
RowReader = Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]
#: ``(first row, probabilities (K, rows, W), valid (rows, W) bool or None)``, top to bottom.
Strip = tuple[int, np.ndarray, np.ndarray | None]


# ---------------------------------------------------------------------------- the model


@dataclass
class LoadedModel:
    """A checkpoint ready to predict: the model in eval mode on its device, and its config.

    ``checkpoint`` is the file the weights came from (a ``.ckpt``, or a ``.pth`` of its run),
    ``run`` the run folder it belongs to.
    """

    model: torch.nn.Module
    config: LandsegConfig
    class_labels: list[str]
    in_channels: int
    size_multiple: int
    device: torch.device
    checkpoint: Path | None = None
    run: Path | None = None

    @classmethod
    def from_task(
        cls, task: Any, checkpoint: Path | None = None, run: Path | None = None
    ) -> LoadedModel:
        config = task.config
        train = config.train_setup
        return cls(
            model=task.model.eval(),
            config=config,
            class_labels=list(task.class_labels),
            in_channels=task.in_channels,
            size_multiple=model_size_multiple(train.model_name, train.model_params),
            device=next(task.model.parameters()).device,
            checkpoint=checkpoint,
            run=run,
        )

    @classmethod
    def load(cls, checkpoint: Path, device: str = "auto") -> LoadedModel:
        """Load a landseg checkpoint onto ``device`` (auto: the GPU when there is one).

        A ``.pth`` (a network's ``state_dict``, as ``model_out_ext: .pth`` and
        ``export_checkpoint: pth`` write) holds no config: the model is built from the
        hyper-parameters of a ``.ckpt`` of the run folder it lies in, then given its weights.
        """
        checkpoint = Path(checkpoint).absolute()
        if checkpoint.suffix == ".pth":
            task, run = _task_from_weights(checkpoint)
        else:
            task, run = _task_from_checkpoint(checkpoint), checkpoint.parent.parent
        task.to(choose_device(device))
        return cls.from_task(task, checkpoint, run)

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)

    def tile_probabilities(self, tiles: np.ndarray, batch_size: int) -> np.ndarray:
        """Softmax probabilities ``(N, K, h, w)`` of tiles ``(N, C, h, w)``.

        Each tile is padded by reflection up to the model's size multiple, and the
        prediction cropped back.
        """
        n, _, height, width = tiles.shape
        m = self.size_multiple
        pad_h, pad_w = -height % m, -width % m
        if pad_h or pad_w:
            tiles = np.pad(tiles, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
        out = np.empty((n, self.n_classes, height, width), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch_size]))
                logits = self.model(batch.to(self.device, dtype=torch.float32))
                probs = torch.softmax(logits.float(), dim=1)[:, :, :height, :width]
                out[start : start + batch_size] = probs.cpu().numpy()
        return out


def _task_from_checkpoint(checkpoint: Path) -> Any:
    from landseg.tasks.segmentation import SegmentationTask

    try:
        load_checkpoint(checkpoint)  # refuses a crafted file with one clear line
        return SegmentationTask.load_from_checkpoint(
            checkpoint, map_location="cpu", weights_only=True
        )
    except Exception as error:
        raise LandsegError(checkpoint_error_line(checkpoint, error)) from error


def _task_from_weights(weights: Path) -> tuple[Any, Path]:
    """The task of a ``.pth``'s run (from its ``.ckpt``) with the ``.pth``'s weights, strictly."""
    from landseg.runs.catalog import weights_run

    run = weights_run(weights)
    source = run.best_checkpoint()
    if source is None:
        raise LandsegError(
            f"{weights}: a .pth holds no config; the model is built from a .ckpt of its run, "
            f"and {run.checkpoints} holds none"
        )
    task = _task_from_checkpoint(source)
    try:
        load_weights(task.model, weights)
    except WeightsMismatchError as error:
        name = task.config.train_setup.model_name
        raise LandsegError(
            f"{weights}: its weights do not fit the run's model {name} ({error.report.detail()})"
        ) from error
    return task, run.path


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LandsegError("--device cuda: no CUDA GPU is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise LandsegError(f"--device {name}: {error}") from error


# ---------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap in pixels, and the batch of tiles per forward pass."""

    tile: int = 256
    overlap: int = 64
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise LandsegError(f"--tile must be at least 1, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise LandsegError(
                f"--overlap must be >= 0 and smaller than --tile {self.tile}, got {self.overlap}"
            )
        if self.batch_size < 1:
            raise LandsegError(f"--batch-size must be at least 1, got {self.batch_size}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def starts(self, length: int, anchor: int = 0) -> list[int]:
        """Local origins of the tiles that cover ``[0, length)``, in increasing order.

        ``anchor`` is the global index of local pixel 0. Every tile that fits inside the
        raster and starts on a global multiple of the stride is predicted; where the grid
        leaves a margin at either edge (less than a stride), one more tile flush with that
        edge covers it. A raster shorter than a tile has one tile, at 0 (padded by
        reflection). Consecutive starts are at most a stride apart.
        """
        if length <= self.tile:
            return [0]
        first = -anchor % self.stride  # the first global multiple of the stride at or after 0
        starts = list(range(first, length - self.tile + 1, self.stride))
        if not starts or starts[0] > 0:
            starts.insert(0, 0)
        if starts[-1] + self.tile < length:
            starts.append(length - self.tile)
        return starts

    def check_model(self, model: LoadedModel) -> None:
        if self.tile < model.size_multiple:
            raise LandsegError(
                f"--tile {self.tile} is smaller than the {model.size_multiple} px multiple that "
                f"model '{model.config.train_setup.model_name}' needs"
            )


def blend_weights(tile: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """The ``(tile, tile)`` 2D Hann window, ~0 at the borders, 1 at the centre, >= ``floor``."""
    ramp = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return (floor + (1.0 - floor) * np.outer(ramp, ramp)).astype(np.float32)


def grid_anchor(transform: Affine | None) -> tuple[int, int]:
    """(row, column) of a raster's first pixel on its CRS's pixel grid (0, 0 if unknown)."""
    if transform is None or transform.is_identity:
        return 0, 0
    linear = Affine(transform.a, transform.b, 0.0, transform.d, transform.e, 0.0)
    if abs(linear.determinant) < 1e-300:
        return 0, 0
    col, row = ~linear @ (transform.c, transform.f)
    return round(row), round(col)


def blended_strips(
    model: LoadedModel,
    read_rows: RowReader,
    height: int,
    width: int,
    tiling: Tiling,
    anchor: tuple[int, int] = (0, 0),
    advance: Callable[[int], None] | None = None,
    start_row: int = 0,
    predicted: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(first row, probabilities (K, rows, width), valid)`` strips from top to bottom.

    A tile whose input is nodata everywhere (``valid`` all False: the raster's nodata, or
    outside an area of interest) is not sent through the model: every pixel it covers is
    written as nodata whatever it would have said, and the pixels it shares with other tiles
    are nodata too, so no valid pixel changes. ``advance(n)`` counts the tiles done, predicted
    or not; ``predicted(n)`` the tiles sent through the model.

    With ``start_row``, the strips from the one that holds that row on, each exactly as the
    whole scene's (a prediction resumed after a kill): a strip's values are a pure function of
    its position. The blended rows of a strip also hold the earlier tile rows that reach into
    it, so those tile rows are predicted again first (at most ``tile / stride`` of them) and
    added in the same order, from the same zeros, as without ``start_row``: the same floats.
    """
    if start_row >= height:
        return
    if height <= tiling.tile and width <= tiling.tile:
        image, valid = read_rows(0, height)
        if valid is not None and not valid.any():
            probs = np.zeros((model.n_classes, height, width), dtype=np.float32)
        else:
            probs = model.tile_probabilities(image[np.newaxis], tiling.batch_size)[0]
            if predicted:
                predicted(1)
        if advance:
            advance(1)
        yield 0, probs, valid
        return
    t = tiling.tile
    ys, xs = tiling.starts(height, anchor[0]), tiling.starts(width, anchor[1])
    first_yielded = max(i for i, y in enumerate(ys) if y <= start_row)
    first_predicted = min(i for i, y in enumerate(ys) if y + t > ys[first_yielded])
    weights = blend_weights(t)
    acc = np.zeros((model.n_classes, t, width), dtype=np.float32)
    total = np.zeros((t, width), dtype=np.float32)
    # ``acc`` and ``total`` hold rows [y0, y0 + t); the rows at or past ``added`` are zeros
    # (no tile added to them yet): a run of nodata strips then costs no blending at all
    added = 0
    for index, (y0, y_next) in enumerate(zip(ys, [*ys[1:], height], strict=True)):
        if index < first_predicted:
            continue
        r0, r1 = y0, min(y0 + t, height)
        image, valid = read_rows(r0, r1)
        wanted = [x for x in xs if valid is None or valid[:, max(x, 0) : x + t].any()]
        if advance and len(wanted) < len(xs):
            advance(len(xs) - len(wanted))
        if wanted:
            margins = ((0, 0), (r0 - y0, y0 + t - r1), (-xs[0], xs[-1] + t - width))
            # np.pad copies even with nothing to add: a strip of the full width, not kept
            padded = any(m for pair in margins for m in pair)
            strip = np.pad(image, margins, mode="reflect") if padded else image
            added = y0 + t
        for first in range(0, len(wanted), tiling.batch_size):
            batch = wanted[first : first + tiling.batch_size]
            tiles = np.stack([strip[:, :, x - xs[0] : x - xs[0] + t] for x in batch])
            for x, probs in zip(batch, model.tile_probabilities(tiles, len(batch)), strict=True):
                c0, c1 = max(x, 0), min(x + t, width)
                w = weights[:, c0 - x : c1 - x]
                acc[:, :, c0:c1] += probs[:, :, c0 - x : c1 - x] * w
                total[:, c0:c1] += w
            if advance:
                advance(len(batch))
            if predicted:
                predicted(len(batch))
        f0, f1 = r0, min(y_next, height)  # rows no later tile touches
        if f1 > f0 and index >= first_yielded:
            rows = slice(f0 - y0, f1 - y0)
            done = valid[f0 - r0 : f1 - r0] if valid is not None else None
            if added <= f0 or (done is not None and not done.any()):
                # no tile over these rows, or every pixel nodata: zeros, never read (a view)
                blended = np.broadcast_to(np.float32(0), (model.n_classes, f1 - f0, width))
            else:
                blended = np.zeros_like(acc[:, rows])  # 0 where only skipped tiles lie (nodata)
                np.divide(acc[:, rows], total[rows], out=blended, where=total[rows] > 0)
            yield f0, blended, done
        step = y_next - y0  # at most a stride: the next tile's rows start here
        if added > y_next:  # rows of the next window already hold tiles: keep them
            acc = np.concatenate([acc[:, step:], np.zeros_like(acc[:, :step])], axis=1)
            total = np.concatenate([total[step:], np.zeros_like(total[:step])], axis=0)
        elif added > y0:  # what was added lies in the rows left behind
            acc.fill(0)
            total.fill(0)


def tile_count(height: int, width: int, tiling: Tiling, anchor: tuple[int, int]) -> int:
    if height <= tiling.tile and width <= tiling.tile:
        return 1
    return len(tiling.starts(height, anchor[0])) * len(tiling.starts(width, anchor[1]))


def predict_array(
    model: LoadedModel, image: np.ndarray, tiling: Tiling, anchor: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Probabilities ``(K, H, W)`` of one normalised in-memory image ``(C, H, W)``."""
    height, width = image.shape[1:]
    out = np.empty((model.n_classes, height, width), dtype=np.float32)
    strips = blended_strips(
        model, lambda a, b: (image[:, a:b], None), height, width, tiling, anchor
    )
    for first, probs, _ in strips:
        out[:, first : first + probs.shape[1]] = probs
    return out


# ---------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalization:
    """How the run normalised its test split: bands, pixel range, mean/std."""

    bands: list[int] | None
    pixel_range: float
    stats: SplitStats | None

    @classmethod
    def for_raster(
        cls, config: LandsegConfig, dtype: str, source: Path, pixel_range: float | None = None
    ) -> Normalization:
        data = config.data_source
        weights = data.normalization_weights
        try:
            value = resolve_pixel_range(dtype, pixel_range or data.pixel_range, source)
        except DataError as error:
            raise LandsegError(
                f"{source}: {dtype} image and the run's config sets no data_source.pixel_range; "
                "pass --pixel-range (the value that maps to 1.0, e.g. 255 for 8-bit values)"
            ) from error
        return cls(
            list(data.image_bands) if data.image_bands else None,
            value,
            weights.for_split("test") if weights else None,
        )

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return standardize(scale(raw, self.pixel_range), self.stats)


def nodata_free(raw: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Pixels that are not nodata in every band (None: the raster has no nodata). Rows all at
    nodata (an empty margin or scene) are told by two reductions, without a mask per band."""
    if nodata is not None and raw.size and raw.min() == raw.max() == nodata:
        return np.zeros(raw.shape[1:], dtype=bool)
    missing = nodata_pixels(raw, nodata)
    return None if missing is None else ~missing


# ---------------------------------------------------------------------------- output rasters


@dataclass(frozen=True)
class OutputType:
    """How a raster of one ``prediction_output_type`` is made from the probabilities.

    The names and meanings of the output types are :data:`landseg.config.choices.OUTPUT_TYPES`'
    (the config and the parser read them there); each is carried out by its entry of
    :data:`OUTPUT_WRITERS`. Whether a type is a class map (a colour table and a ``.qml``) and
    how many classes it holds are the names' ``info``.
    """

    dtype: str  # "uint8" or "float32"; nodata 255 or NaN
    per_class: bool  # one band per class, else one band
    categorical: bool  # NEAREST overviews and no predictor, else AVERAGE and a predictor
    encode: Callable[[np.ndarray], np.ndarray]  # (K, rows, W) probabilities -> (bands, rows, W)

    @property
    def nodata(self) -> float:
        return math.nan if self.dtype == "float32" else NODATA_UINT8


def _class_indices(probs: np.ndarray) -> np.ndarray:
    return probs.argmax(axis=0).astype(np.uint8)[np.newaxis]


def _scaled(probs: np.ndarray) -> np.ndarray:
    return np.minimum(np.rint(probs * 255), NODATA_UINT8 - 1).astype(np.uint8)


def _bits(probs: np.ndarray) -> np.ndarray:
    winners = probs.argmax(axis=0)
    return (np.arange(probs.shape[0])[:, None, None] == winners).astype(np.uint8)


#: The writers of the output types of :data:`landseg.config.choices.OUTPUT_TYPES`.
OUTPUT_WRITERS: Registry[OutputType] = Registry("prediction output type")
OUTPUT_WRITERS.add("classes", OutputType("uint8", False, True, _class_indices))
OUTPUT_WRITERS.add("uint8", OutputType("uint8", True, False, _scaled))
OUTPUT_WRITERS.add("float32", OutputType("float32", True, False, lambda p: p.astype(np.float32)))
OUTPUT_WRITERS.add("bit", OutputType("uint8", True, True, _bits))
check_implements(OUTPUT_TYPES, OUTPUT_WRITERS)


def is_class_map(output_type: str) -> bool:
    """One band of class indices, with a colour table and a ``.qml`` (``classes``)."""
    return bool(OUTPUT_TYPES.info(output_type)["class_map"])


def check_output_type(output_type: str, n_classes: int) -> None:
    if output_type not in OUTPUT_WRITERS:
        raise LandsegError(
            f"--type: {unknown_name_message('output type', output_type, OUTPUT_WRITERS.names())}"
        )
    most = OUTPUT_TYPES.info(output_type)["max_classes"]
    if most is not None and n_classes > most:
        raise LandsegError(f"--type {output_type}: {n_classes} classes do not fit in uint8 values")


def output_profile(src: Any, output_type: str, n_classes: int) -> dict[str, Any]:
    """What a prediction holds: the input's grid, CRS and transform; bands, dtype, nodata.

    How it is stored (a COG: tiles, compression, overviews) is :mod:`landseg.maps.cog`'s.
    """
    check_output_type(output_type, n_classes)
    kind = OUTPUT_WRITERS.get(output_type)
    profile: dict[str, Any] = {
        "width": src.width,
        "height": src.height,
        "count": n_classes if kind.per_class else 1,
        "dtype": kind.dtype,
        "nodata": kind.nodata,
        "crs": src.crs,
        "transform": src.transform,
    }
    if profile["count"] > 1:  # per-class bands: not RGB(A), or GIS tools hide the last class
        profile["photometric"] = "MINISBLACK"
    return profile


def output_layout(output_type: str) -> CogLayout:
    """Class maps and bits: NEAREST overviews, no predictor; probabilities: AVERAGE, predictor."""
    kind = OUTPUT_WRITERS.get(output_type)
    return cog_layout(kind.dtype, kind.categorical)


def encode_strip(probs: np.ndarray, valid: np.ndarray | None, output_type: str) -> np.ndarray:
    """The ``(bands, rows, W)`` values written for ``output_type``; nodata where not valid."""
    kind = OUTPUT_WRITERS.get(output_type)
    if valid is not None and not valid.any():  # rows of nodata: the probabilities are not read
        bands = probs.shape[0] if kind.per_class else 1
        return np.full((bands, *valid.shape), kind.nodata, dtype=kind.dtype)
    data = kind.encode(probs)
    if valid is not None:
        data[:, ~valid] = kind.nodata
    return data


def prediction_colors(model: LoadedModel) -> list[str]:
    """The colours of a model's class rasters: :func:`landseg.maps.style.run_colors`."""
    return run_colors(model.config, model.n_classes)


@dataclass(frozen=True)
class PixelSettings:
    """The settings of a prediction, besides its model, that change its pixels.

    Recorded in every prediction's tags (:meth:`tags`), with the checkpoint and the output
    type, so that a raster says how to make it again: the pixel range the input was divided by,
    the tile size and overlap that cut and blended it, and the test-time augmentation.
    """

    pixel_range: float
    tiling: Tiling
    tta: str | None = None

    @classmethod
    def of(cls, model: Any, pixel_range: float, tiling: Tiling) -> PixelSettings:
        """The settings of predicting with ``model`` (a :class:`TTAModel` gives its mode)."""
        return cls(pixel_range, tiling, model.mode if isinstance(model, TTAModel) else None)

    def tags(self) -> dict[str, str]:
        return {
            "landseg_pixel_range": f"{self.pixel_range:g}",
            "landseg_tile": str(self.tiling.tile),
            "landseg_overlap": str(self.tiling.overlap),
            "landseg_tta": self.tta or "none",
        }


def _describe_output(
    dst: Any, model: LoadedModel, output_type: str, settings: PixelSettings | None
) -> None:
    """Class names and how the pixels were made travel in the file: evaluate and GIS tools
    read them back."""
    tags = {"landseg_class_labels": json.dumps(model.class_labels), "landseg_type": output_type}
    if model.checkpoint is not None:
        tags["landseg_checkpoint"] = str(model.checkpoint)
    if settings is not None:
        tags.update(settings.tags())
    dst.update_tags(**tags)
    if is_class_map(output_type):
        dst.write_colormap(1, colormap(prediction_colors(model)))
        dst.set_band_description(
            1, "class: " + ", ".join(f"{i} {label}" for i, label in enumerate(model.class_labels))
        )
        dst.update_tags(1, **{f"class_{i}": label for i, label in enumerate(model.class_labels)})
    else:
        for band, label in enumerate(model.class_labels, start=1):
            dst.set_band_description(band, label)


class StripProgress(Protocol):
    """Where a resumable prediction keeps its progress between launches
    (:class:`landseg.inference.job.ScenePart`): its staging file, the rows on disk in it, and
    the tiles sent through the model so far.

    A *piece* of a scene cut among processes holds rows ``first_row`` to ``stop_row``; the
    whole scene has ``stop_row`` None. A piece's staging file is its product: the COG is made
    from every piece at once by :func:`assemble_scene`.
    """

    staging: Path
    rows_done: int
    tiles: int
    first_row: int
    stop_row: int | None

    def record(self, rows: int) -> None:
        """Called once ``rows`` rows are on disk in ``staging`` (closed and synced)."""


class PredictionStopped(StopRequested):
    """A stop signal ended a prediction between two strips: what was written is kept, and the
    same command continues it (``landseg predict`` exits 128 + the signal, as ``train``)."""

    def __init__(self, signum: int, where: str):
        super().__init__(signum, 0)
        self.args = (f"stopped by {signal_name(signum)} {where}",)


#: ``stop() -> the signal number`` when a stop was asked, else None.
StopCheck = Callable[[], int | None]


def write_prediction(
    destination: Path,
    grid: Any,
    model: LoadedModel,
    output_type: str,
    strips: Iterable[Strip],
    settings: PixelSettings | None = None,
    part: StripProgress | None = None,
    stop: StopCheck | None = None,
) -> Path:
    """The one writer of prediction rasters, ``landseg predict``'s and training's alike.

    ``grid`` is the open input raster (its size, CRS and transform are kept); ``strips`` its
    probabilities, a strip of rows at a time. The file is a Cloud-Optimised GeoTIFF
    (:mod:`landseg.maps.cog`: written on temporary paths, then renamed; memory stays
    flat), with nodata, class names and tags as :func:`output_profile` and
    :func:`_describe_output` say. A class raster gets its QGIS style ``<stem>.qml`` beside it.
    """
    destination = Path(destination)
    if part is not None:
        _write_resumable(destination, grid, model, output_type, strips, settings, part, stop)
        if part.stop_row is not None:  # a piece: the COG is made once every piece is in
            return part.staging
    else:
        encoded = (
            (first, encode_strip(probs, valid, output_type)) for first, probs, valid in strips
        )
        _write_encoded(destination, grid, model, output_type, encoded, settings)
    _write_style(destination, model, output_type)
    return destination


def _write_encoded(
    destination: Path,
    grid: Any,
    model: LoadedModel,
    output_type: str,
    rows: Iterable[tuple[int, np.ndarray]],
    settings: PixelSettings | None,
) -> None:
    """The COG of ``(first row, encoded (bands, rows, W))`` strips, described."""
    profile = output_profile(grid, output_type, model.n_classes)
    with cog_writer(destination, profile, output_layout(output_type)) as out:
        for first, data in rows:
            out.write_rows(first, data)
        _describe_output(out.dataset, model, output_type, settings)


def _write_style(destination: Path, model: LoadedModel, output_type: str) -> None:
    """A class raster's QGIS style beside it; a probability raster's stale one removed."""
    if is_class_map(output_type):
        write_qml(destination, model.class_labels, prediction_colors(model))
    else:
        remove_stale_style(destination)


def _write_resumable(
    destination: Path,
    grid: Any,
    model: LoadedModel,
    output_type: str,
    strips: Iterable[Strip],
    settings: PixelSettings | None,
    part: StripProgress,
    stop: StopCheck | None,
) -> None:
    """:func:`write_prediction` into ``part``'s staging file from its ``rows_done`` on
    (``strips`` start at or before it: rows already on disk are not written again) to its
    ``stop_row``, its progress recorded after each strip, and a stop asked honoured between
    two strips. A piece (``stop_row`` set) is not copied into a COG."""
    profile = output_profile(grid, output_type, model.n_classes)
    layout = output_layout(output_type)
    end = grid.height if part.stop_row is None else part.stop_row
    with resumable_cog_writer(
        destination if part.stop_row is None else None,
        part.staging,
        profile,
        layout,
        part.rows_done,
        part.record,
        first_row=part.first_row,
    ) as out:
        for first, probs, valid in strips:
            cut = max(out.durable - first, 0)
            keep = min(probs.shape[1], end - first)  # a piece ends inside a strip
            if cut < keep:
                rows = valid[cut:keep] if valid is not None else None
                out.write_rows(first + cut, encode_strip(probs[:, cut:keep], rows, output_type))
            signum = stop() if stop is not None else None
            if signum is not None or valid is None or valid.any():
                # a strip all nodata is not recorded on its own (closing and syncing the
                # file costs more than computing it again after a kill): a run of them is
                # recorded with the next strip that holds data, at a stop, or at the end
                out.checkpoint()
            if first + probs.shape[1] >= end:
                break  # a piece's last strip (the whole scene's ends here anyway)
            if signum is not None:
                where = f"after {out.durable} of {grid.height} rows of {destination.stem}"
                raise PredictionStopped(signum, where)
        if part.stop_row is None:
            _describe_output(out.dataset, model, output_type, settings)


def valid_pixels(src: Any, bands: Sequence[int] | None = None) -> np.ndarray | None:
    """The pixels of an open raster that are not nodata in every band read (None: no nodata)."""
    if src.nodata is None:
        return None
    return nodata_free(src.read(list(bands) if bands else None), src.nodata)


# ---------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class PredictOptions:
    """How scenes are predicted; ``aoi`` (:class:`landseg.maps.aoi.AreaOfInterest`): nodata
    outside its polygons, and nothing sent through the model there."""

    tiling: Tiling = Tiling()
    output_type: str = "classes"
    pixel_range: float | None = None
    aoi: Any = None


def predict_scene(
    model: LoadedModel,
    source: Path,
    destination: Path,
    options: PredictOptions,
    progress: Any = None,
    part: StripProgress | None = None,
    stop: StopCheck | None = None,
) -> Path:
    """Predict one raster into ``destination`` (written on a temporary path, then renamed).

    With ``part`` (a prediction job's, :mod:`landseg.inference.job`), the raster is written
    into a staging file that outlives a kill, continued from the rows it holds, and ``stop``
    is asked after each strip (see :func:`write_prediction`).
    """
    tiling = options.tiling
    tiling.check_model(model)
    with open_raster(source) as src:
        problems = raster_problems(model, src, source, options.pixel_range)
        if problems:
            raise LandsegError(problems)
        normalize = Normalization.for_raster(
            model.config, src.dtypes[0], source, options.pixel_range
        )
        bands = model_bands(model, src)
        nodata = src.nodata
        area = options.aoi.on(src) if options.aoi is not None else None

        def read_rows(first: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
            raw = src.read(bands, window=Window(0, first, src.width, stop - first))
            valid = nodata_free(raw, nodata)
            if area is not None:
                inside = area.inside(first, stop)
                valid = inside if valid is None else valid & inside
            if valid is not None and not valid.any():  # no tile of these rows is predicted
                return np.broadcast_to(np.float32(0), raw.shape), valid
            return normalize(raw), valid

        def nothing(first: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
            """A scene outside the area of interest: not read, all nodata."""
            shape = (stop - first, src.width)
            return np.broadcast_to(np.float32(0), (len(bands), *shape)), np.zeros(shape, bool)

        anchor = grid_anchor(src.transform)
        task = None
        if progress is not None:
            if part is None or part.stop_row is None:
                total = tile_count(src.height, src.width, tiling, anchor)
                task = progress.add_task(source.name, total=total, unit="tiles")
            else:  # a piece: its tiles are not counted ahead
                name = f"{source.name} rows {part.first_row}-{part.stop_row}"
                task = progress.add_task(name, total=None, unit="tiles")

        def advance(tiles: int) -> None:
            if task is not None:
                progress.advance(task, tiles)

        def predicted(tiles: int) -> None:
            if part is not None:
                part.tiles += tiles

        strips = blended_strips(
            model,
            read_rows if area is None or area.touches() else nothing,
            src.height,
            src.width,
            tiling,
            anchor,
            advance,
            start_row=part.rows_done if part is not None else 0,
            predicted=predicted,
        )
        settings = PixelSettings.of(model, normalize.pixel_range, tiling)
        return write_prediction(
            destination, src, model, options.output_type, strips, settings, part, stop
        )


def assemble_scene(
    model: LoadedModel,
    source: Path,
    destination: Path,
    options: PredictOptions,
    pieces: Sequence[StripProgress],
) -> Path:
    """The COG of a scene predicted in pieces (rows cut among processes, each piece's staging
    file written by :func:`predict_scene`), top to bottom: the same file, byte for byte, as
    the scene predicted whole, since each strip's values are a pure function of its position
    (:func:`blended_strips`) and the COG depends on the pixels, not on the staging files."""
    with open_raster(source) as src:
        normalize = Normalization.for_raster(
            model.config, src.dtypes[0], source, options.pixel_range
        )
        settings = PixelSettings.of(model, normalize.pixel_range, options.tiling)

        def rows() -> Iterator[tuple[int, np.ndarray]]:
            for piece in sorted(pieces, key=lambda p: p.first_row):
                stop = src.height if piece.stop_row is None else piece.stop_row
                with open_raster(piece.staging) as staged:
                    for first in range(piece.first_row, stop, ASSEMBLY_ROWS):
                        window = Window(0, first, src.width, min(ASSEMBLY_ROWS, stop - first))
                        yield first, staged.read(window=window)

        _write_encoded(destination, src, model, options.output_type, rows(), settings)
    _write_style(destination, model, options.output_type)
    return destination


def model_bands(model: LoadedModel, src: Any) -> list[int]:
    """The bands of ``src`` the model reads: the run's ``image_bands``, else all."""
    image_bands = model.config.data_source.image_bands
    return list(image_bands) if image_bands else list(range(1, src.count + 1))


def raster_problems(
    model: LoadedModel, src: Any, source: Path, pixel_range: float | None = None
) -> list[str]:
    """Why ``predict_scene`` would refuse an open raster: one line each, naming the file."""
    problems = []
    bands = model_bands(model, src)
    if max(bands) > src.count or len(bands) != model.in_channels:
        image_bands = model.config.data_source.image_bands
        problems.append(
            f"{source}: the model takes {model.in_channels} bands (image_bands "
            f"{list(image_bands) if image_bands else 'all'}) but the raster has {src.count}"
        )
    try:
        Normalization.for_raster(model.config, src.dtypes[0], source, pixel_range)
    except LandsegError as error:
        problems.extend(error.problems)
    return problems


def input_problems(
    model: LoadedModel, inputs: Sequence[Path], pixel_range: float | None = None
) -> dict[Path, list[str]]:
    """The inputs that cannot be predicted (unreadable, bands, dtype without a pixel range)."""
    problems: dict[Path, list[str]] = {}
    for source in inputs:
        try:
            with open_raster(source) as src:
                lines = raster_problems(model, src, source, pixel_range)
        except LandsegError as error:
            lines = error.problems
        if lines:
            problems[source] = lines
    return problems


def collect_inputs(path: Path, pattern: str | None = None) -> list[Path]:
    """The rasters to predict: one raster, the first column of a CSV, or a folder's files.

    A folder gives its ``.tif``/``.tiff`` files, or with ``pattern`` (``--glob``) the files
    that ``Path.glob(pattern)`` finds in it (``**/`` reaches subfolders).
    """
    path = Path(path)
    if path.is_dir():
        return _folder_inputs(path, pattern)
    if not path.is_file():
        raise LandsegError(f"{path}: input not found (a raster, a CSV file or a folder)")
    if pattern is not None:
        raise LandsegError(f"--glob {pattern}: selects files of a folder --input; {path} is a file")
    if path.suffix.lower() == ".csv":
        return _csv_images(path)
    return [path]


def _folder_inputs(path: Path, pattern: str | None) -> list[Path]:
    if pattern is None:
        found = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
        )
        if not found:
            raise LandsegError(f"{path}: no .tif or .tiff raster in this folder")
        return found
    try:
        found = sorted(p for p in path.glob(pattern) if p.is_file())
    except (ValueError, NotImplementedError) as error:
        raise LandsegError(f"--glob {pattern}: not a usable pattern ({error})") from error
    if not found:
        raise LandsegError(f"{path}: no file matches --glob {pattern}")
    return found


def _csv_images(path: Path) -> list[Path]:
    """The image column of a CSV (``image[,mask,...]``), relative to the CSV's folder."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        cells = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    if cells and cells[0].lower() == "image" and not (path.parent / cells[0]).is_file():
        cells = cells[1:]  # a header line
    if not cells:
        raise LandsegError(f"{path}: CSV file has no image rows")
    images = [path.parent / cell for cell in cells]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise LandsegError(f"{path}: image {missing[0]} does not exist ({len(missing)} missing)")
    return images


def prediction_path(out_dir: Path, source: Path) -> Path:
    return Path(out_dir) / f"{source.stem}.tif"


def make_progress(enabled: bool, stream: Any = None) -> Any:
    """The progress of a prediction on stderr: a no-op context when disabled; rich's live bar
    at a terminal; elsewhere (a log file, a pipe) :class:`PlainProgress`, whose lines follow
    train's rule."""
    if not enabled:
        return contextlib.nullcontext(None)
    from landseg.callbacks.progress import is_terminal

    target = stream if stream is not None else sys.stderr
    if not is_terminal(target):
        return PlainProgress(target)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


class PlainProgress:
    """The calls of rich's ``Progress`` that predictions make, as plain lines for output that
    is not a terminal: at most one line every ``interval_s`` seconds, as training's progress
    (rich, there, prints every task's bar at the end: one line per input file).

    A line: ``predict: scene 12 (zone3_0004.tif) 120/480 tiles | 0:01:02``.
    """

    def __init__(
        self,
        stream: TextIO,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        from landseg.callbacks.progress import PLAIN_INTERVAL_S

        self.stream = stream
        self.interval_s = PLAIN_INTERVAL_S if interval_s is None else interval_s
        self._clock = clock
        self._start = self._last_line = clock()
        self._tasks: list[list[Any]] = []  # description, total, completed, unit

    def __enter__(self) -> PlainProgress:
        self._start = self._last_line = self._clock()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        self._tasks.append([description, total, 0, fields.get("unit", "")])
        return len(self._tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        entry = self._tasks[task]
        entry[2] += advance
        now = self._clock()
        if now - self._last_line < self.interval_s:
            return
        from landseg.callbacks.progress import format_duration

        self._last_line = now
        description, total, completed, unit = entry
        count = f"{completed:g}/{total:g}" if total is not None else f"{completed:g}"
        scene = f"scene {task + 1} ({description})" if len(self._tasks) > 1 else description
        print(
            f"predict: {scene} {count} {unit} | {format_duration(now - self._start)}",
            file=self.stream,
            flush=True,
        )


def predict_files(
    model: LoadedModel,
    inputs: Sequence[Path],
    out_dir: Path,
    options: PredictOptions,
    show_progress: bool = True,
    hint: str | None = None,
) -> list[Path]:
    """Predict every input raster into ``out_dir/<input stem>.tif``.

    Every input is checked first: when any cannot be predicted, all their problems are raised
    at once (one line each, naming the file, then a last line with ``hint``) and nothing is
    written.
    """
    check_inputs(model, inputs, options, hint, out_dir)
    written = []
    with make_progress(show_progress) as progress:
        for source in inputs:
            destination = prediction_path(out_dir, source)
            written.append(predict_scene(model, source, destination, options, progress))
    return written


def check_inputs(
    model: LoadedModel,
    inputs: Sequence[Path],
    options: PredictOptions,
    hint: str | None = None,
    out_dir: Path | None = None,
) -> None:
    """Every check of :func:`predict_files` before any prediction; one error listing all."""
    stems = [p.stem for p in inputs]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise LandsegError(f"inputs share file names ({', '.join(repeated)}): outputs would clash")
    if out_dir is not None:
        problem = folder_problem(out_dir)
        if problem:
            raise LandsegError(f"--output {out_dir}: cannot write the predictions: {problem}")
        replaced = [p for p in inputs if prediction_path(out_dir, p).resolve() == p.resolve()]
        if replaced:
            raise LandsegError(
                f"--output {out_dir}: the prediction of {replaced[0]} would be written over "
                "it; choose another output folder"
            )
    options.tiling.check_model(model)
    check_output_type(options.output_type, model.n_classes)
    if is_class_map(options.output_type):
        prediction_colors(model)  # the run's class_colors fit its classes
    problems = input_problems(model, inputs, options.pixel_range)
    if problems:
        raise LandsegError(
            [
                *(line for lines in problems.values() for line in lines),
                f"nothing predicted: {len(problems)} of {len(inputs)} input(s) cannot be "
                "predicted" + (f" ({hint})" if hint else ""),
            ]
        )
