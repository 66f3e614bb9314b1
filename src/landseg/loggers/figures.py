"""Pure plotting helpers: arrays in, matplotlib Figures or RGB arrays out.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so no
display is needed, no global figure registry grows during a long training, and the caller (the
:class:`~landseg.callbacks.run_logger.RunLogger`) decides where each figure goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from landseg.data.summary import IGNORE_INDEX

#: (title, scalar name) of the learning-curve panels, in order.
_CURVE_PANELS = (("Loss", "loss"), ("mIoU", "miou"), ("Learning rate", "lr"))

#: Above this many classes the confusion-matrix cells are too small to print numbers in.
_MAX_ANNOTATED_CLASSES = 20


def new_figure(width: float, height: float) -> Figure:
    """A Figure drawn by Agg, outside pyplot (garbage-collected like any object)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` uint8 array (what TensorBoard's image panel shows)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ---------------------------------------------------------------------------- colours and images


def class_palette(n: int) -> np.ndarray:
    """``n`` distinct colours as an ``(n, 3)`` uint8 array, always in the same order.

    The qualitative tab10/tab20b/tab20c maps first (60 colours, none black, since black marks
    ignored pixels), then golden-angle hues for any further class.
    """
    colours: list[tuple[float, ...]] = []
    for name in ("tab10", "tab20b", "tab20c"):
        cmap = matplotlib.colormaps[name]
        colours.extend(tuple(cmap(i)[:3]) for i in range(cmap.N))
    golden = (math.sqrt(5) - 1) / 2
    i = 0
    while len(colours) < n:
        hue = (i * golden) % 1.0
        colours.append(tuple(matplotlib.colors.hsv_to_rgb((hue, 0.75, 0.9))))
        i += 1
    return np.round(np.asarray(colours[:n], dtype=np.float64).reshape(n, 3) * 255).astype(np.uint8)


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class indices ``(H, W)`` to colours ``(H, W, 3)`` uint8; ignored pixels (-1) are black."""
    mask = np.asarray(mask)
    ignored = mask == IGNORE_INDEX
    valid = mask[~ignored]
    if valid.size and (valid.min() < 0 or valid.max() >= len(palette)):
        raise ValueError(
            f"mask values must be in [0, {len(palette)}) or {IGNORE_INDEX}, "
            f"got [{valid.min()}, {valid.max()}]"
        )
    rgb = np.asarray(palette, dtype=np.uint8)[np.where(ignored, 0, mask)]
    rgb[ignored] = 0
    return rgb


def default_display_bands(n_bands: int) -> tuple[int, ...]:
    """Bands shown when none are chosen: the first three, or the first one as grey."""
    return (0, 1, 2) if n_bands >= 3 else (0,)


def display_image(image: np.ndarray, bands: Sequence[int] | None = None) -> np.ndarray:
    """A normalised ``(C, H, W)`` image as ``(H, W, 3)`` uint8 for display.

    Each shown band is stretched between its 2nd and 98th percentiles (normalised values have
    no fixed range). Three bands are shown as RGB; one or two as grey (the mean of the two).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {image.shape}")
    bands = tuple(default_display_bands(image.shape[0]) if bands is None else bands)
    if not 1 <= len(bands) <= 3:
        raise ValueError(f"display bands must be 1 to 3 band indices, got {bands}")
    if any(not 0 <= b < image.shape[0] for b in bands):
        raise ValueError(f"display bands {bands} out of range for {image.shape[0]} bands")
    stretched = np.stack([_stretch(image[b]) for b in bands], axis=-1)
    if len(bands) < 3:
        stretched = np.repeat(stretched.mean(axis=-1, keepdims=True), 3, axis=-1)
    return np.round(stretched * 255).astype(np.uint8)


def _stretch(band: np.ndarray) -> np.ndarray:
    """Map the 2-98 percentile range of one band to [0, 1]; NaN and constant bands give 0."""
    finite = band[np.isfinite(band)]
    if finite.size == 0:
        return np.zeros_like(band)
    low, high = np.percentile(finite, (2, 98))
    if high <= low:
        return np.zeros_like(band)
    return np.nan_to_num(np.clip((band - low) / (high - low), 0.0, 1.0))


# ---------------------------------------------------------------------------- metric figures


def confusion_matrix_figure(cm: np.ndarray, labels: Sequence[str], normalize: bool) -> Figure:
    """Confusion matrix, rows = true class; ``normalize`` divides each row by its total (recall)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = len(labels)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} labels")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, totals, out=np.zeros_like(cm), where=totals != 0)
    else:
        values = cm
    side = max(4.0, 0.45 * n + 2.5)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(
        image, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "pixels"
    )
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else " (pixels)"))
    if n <= _MAX_ANNOTATED_CLASSES:
        threshold = (values.max() or 1.0) / 2
        for (i, j), value in np.ndenumerate(values):
            text = f"{value:.2f}" if normalize else _short_count(value)
            colour = "white" if value > threshold else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    return fig


def _short_count(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def per_class_bars(
    report: Mapping[str, Any],
    labels: Sequence[str],
    metrics: Sequence[str] = ("IoU", "F1-Score"),
) -> Figure:
    """Grouped horizontal bars of ``<label>/<metric>`` from an ODEON history entry.

    Classes with a ``None`` value (absent from targets and predictions) get no bar and are
    marked "n/a"; the dashed lines are the ``Average/<metric>`` macro means.
    """
    n = len(labels)
    fig = new_figure(7.0, max(3.0, 0.35 * n * max(1, len(metrics)) + 1.5))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(metrics))
    rows = np.arange(n)
    colours = class_palette(max(3, len(metrics)))[: len(metrics)] / 255
    for k, (metric, colour) in enumerate(zip(metrics, colours, strict=True)):
        values = [report.get(f"{label}/{metric}") for label in labels]
        offsets = rows - 0.4 + height * (k + 0.5)
        heights = [np.nan if v is None else float(v) for v in values]
        ax.barh(offsets, heights, height=height, color=colour, label=metric)
        for y, value in zip(offsets, values, strict=True):
            if value is None:
                ax.text(0.01, y, "n/a", va="center", fontsize=7, color="grey")
        average = report.get(f"Average/{metric}")
        if average is not None:
            ax.axvline(float(average), color=colour, linestyle="--", linewidth=1)
    ax.set_yticks(rows, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (dashed: macro average)")
    ax.set_title("Per-class " + ", ".join(metrics))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def learning_curves(rows: Iterable[Mapping[str, Any]]) -> Figure:
    """Loss (train and val), mIoU and learning rate along training, from ``scalars.jsonl`` rows.

    Rows are ``{"phase", "step", "epoch"?, <scalar>: value}``. The x axis is the epoch when every
    plotted row has one, else the optimizer step. Panels without data are left out.

    Epochs are drawn as the console numbers them, from 1: a row's ``epoch`` is Lightning's
    0-based ``current_epoch``, so a train or validation row of epoch ``e`` is drawn at ``e + 1``
    (the epochs done when it was recorded), and a test row, recorded after fit when
    ``current_epoch`` equals the epochs done, at its ``epoch``: on the last epoch, not after it.
    """
    series: dict[tuple[str, str], dict[float, float]] = {}  # (scalar, phase) -> {x: value}
    rows = list(rows)
    use_epoch = bool(rows) and all(row.get("epoch") is not None for row in rows)
    x_key = "epoch" if use_epoch else "step"
    for row in rows:  # a later row of the same phase and x replaces an earlier one (resume)
        for key, value in row.items():
            if key in ("phase", "step", "epoch", "time") or not _is_number(value):
                continue
            series.setdefault((key, row["phase"]), {})[_x_value(row, x_key)] = float(value)
    panels = [(title, name) for title, name in _CURVE_PANELS if name in {n for n, _ in series}]
    fig = new_figure(5.0 * max(1, len(panels)), 4.0)
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no scalars recorded", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, metric) in zip(axes, panels, strict=True):
        positive = True
        for (name, phase), points in sorted(series.items()):
            if name == metric:
                x, y = zip(*sorted(points.items()), strict=True)
                ax.plot(x, y, marker="o", markersize=3, label=phase)
                finite = np.asarray(y)[np.isfinite(y)]
                positive = positive and bool(np.all(finite > 0))
        if metric == "lr" and positive:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _x_value(row: Mapping[str, Any], x_key: str) -> float:
    """Where a row is drawn: its step, or its epoch counted from 1 (see :func:`learning_curves`)."""
    if x_key == "epoch" and row["phase"] != "test":
        return float(row["epoch"]) + 1
    return float(row[x_key])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
