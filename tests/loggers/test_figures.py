"""Plotting helpers: colours, display images and figures that render without a display."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from landseg.loggers.figures import (
    class_palette,
    colorize,
    confusion_matrix_figure,
    display_image,
    figure_to_rgb,
    learning_curves,
    per_class_bars,
)
from landseg.tasks.metrics import metrics_from_confusion

LABELS = ["water", "forest", "urban"]
CM = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # urban absent


def test_palette_fixed_distinct_and_never_black() -> None:
    palette = class_palette(70)
    assert palette.shape == (70, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == 70
    assert not (palette == 0).all(axis=1).any()
    np.testing.assert_array_equal(class_palette(5), palette[:5])


def test_colorize_ignored_pixels_black() -> None:
    palette = class_palette(3)
    rgb = colorize(np.array([[0, 2], [-1, 1]]), palette)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], palette[2])
    with pytest.raises(ValueError, match="mask values"):
        colorize(np.array([[3]]), palette)


@pytest.mark.parametrize(
    ("bands", "chosen", "grey"),
    [(1, None, True), (2, None, True), (5, None, False), (5, (4, 3), True)],
)
def test_display_image_any_band_count(
    bands: int, chosen: tuple[int, ...] | None, grey: bool
) -> None:
    image = np.random.default_rng(0).normal(size=(bands, 8, 9))
    rgb = display_image(image, chosen)
    assert rgb.shape == (8, 9, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 2]).all() == grey
    if chosen is None:  # the 2-98 percentile stretch saturates the tails (a 2-band mean does not)
        assert rgb.min() == 0 and rgb.max() == 255


def test_display_image_constant_and_invalid_bands() -> None:
    assert display_image(np.ones((3, 4, 4))).max() == 0
    with pytest.raises(ValueError, match="out of range"):
        display_image(np.ones((3, 4, 4)), (0, 3))


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_figure(normalize: bool) -> None:
    fig = confusion_matrix_figure(CM, LABELS, normalize=normalize)  # an empty row: no NaN error
    assert isinstance(fig, Figure)
    rgb = figure_to_rgb(fig)
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    with pytest.raises(ValueError, match="3 labels"):
        confusion_matrix_figure(CM[:2, :2], LABELS, normalize=normalize)


def test_per_class_bars_with_absent_class() -> None:
    report = metrics_from_confusion(CM, LABELS)
    assert report["urban/IoU"] is None
    figure_to_rgb(per_class_bars(report, LABELS))


def test_learning_curves_panels_and_empty() -> None:
    rows = [
        {"phase": "val", "step": 2, "epoch": 0, "loss": 1.0, "miou": 0.2},
        {"phase": "train", "step": 2, "epoch": 0, "loss": 1.2, "lr": 0.1},
        {"phase": "train", "step": 4, "epoch": 1, "loss": 0.9, "lr": 0.05},
        {"phase": "train", "step": 4, "epoch": 1, "loss": 0.8, "lr": 0.05},  # resumed epoch
    ]
    fig = learning_curves(rows)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "mIoU", "Learning rate"]
    train_loss = next(line for line in fig.axes[0].lines if line.get_label() == "train")
    assert list(train_loss.get_ydata()) == [1.2, 0.8]
    assert len(learning_curves([]).axes) == 1
