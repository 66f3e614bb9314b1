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


def _drawn_matrix(fig: Figure) -> tuple[np.ndarray, list[str]]:
    """The values of the matrix image and the cell annotations, row by row."""
    ax = fig.axes[0]  # axes[1] is the colour bar
    assert len(ax.images) == 1
    values = ax.images[0].get_array()
    assert not np.ma.is_masked(values)
    return np.asarray(values), [text.get_text() for text in ax.texts]


def test_confusion_matrix_figure_normalised_rows() -> None:
    fig = confusion_matrix_figure(CM, LABELS, normalize=True)
    values, texts = _drawn_matrix(fig)
    expected = np.array([[5 / 6, 1 / 6, 0.0], [2 / 5, 3 / 5, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(values, expected)
    assert np.isfinite(values).all()  # the empty (urban) row stays zeros, no NaN
    np.testing.assert_allclose(values.sum(axis=1), [1.0, 1.0, 0.0], rtol=0, atol=1e-15)
    assert texts == ["0.83", "0.17", "0.00", "0.40", "0.60", "0.00", "0.00", "0.00", "0.00"]
    assert fig.axes[0].images[0].get_clim() == (0, 1)
    assert fig.axes[0].get_title() == "Confusion matrix (row-normalised)"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == LABELS
    rgb = figure_to_rgb(fig)
    assert rgb.ndim == 3 and rgb.shape[2] == 3


def test_confusion_matrix_figure_pixel_counts() -> None:
    big = np.array([[1500, 2_000_000, 0], [7, 999, 3_000_000_000], [0, 0, 0]])
    fig = confusion_matrix_figure(big, LABELS, normalize=False)
    values, texts = _drawn_matrix(fig)
    np.testing.assert_array_equal(values, big.astype(np.float64))
    assert texts == ["1.5k", "2M", "0", "7", "999", "3G", "0", "0", "0"]
    assert fig.axes[0].get_title() == "Confusion matrix (pixels)"


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_figure_checks_its_shape(normalize: bool) -> None:
    with pytest.raises(ValueError, match="3 labels"):
        confusion_matrix_figure(CM[:2, :2], LABELS, normalize=normalize)


def test_per_class_bars_lengths_are_the_report_values() -> None:
    report = metrics_from_confusion(CM, LABELS)
    assert report["urban/IoU"] is None
    labels = ["urban", "water", "forest"]  # drawn in this order: not the report's, not sorted
    fig = per_class_bars(report, labels)
    ax = fig.axes[0]
    assert len(ax.patches) == 6  # 3 classes x (IoU, F1-Score); urban's are NaN (no bar)
    iou, f1 = ax.containers
    assert (iou.get_label(), f1.get_label()) == ("IoU", "F1-Score")
    # horizontal bars: the value is the bar's width (its height is the bar's thickness)
    assert [bar.get_width() for bar in iou] == pytest.approx([np.nan, 0.625, 0.5], nan_ok=True)
    assert [bar.get_width() for bar in f1] == pytest.approx([np.nan, 10 / 13, 2 / 3], nan_ok=True)
    for container, metric in ((iou, "IoU"), (f1, "F1-Score")):
        for bar, label in zip(container, labels, strict=True):
            value = report[f"{label}/{metric}"]
            assert np.isnan(bar.get_width()) if value is None else bar.get_width() == value
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([0.4] * 6)
    centres = [bar.get_y() + bar.get_height() / 2 for bar in ax.patches]
    assert centres == pytest.approx([-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])
    assert [t.get_text() for t in ax.texts] == ["n/a", "n/a"]  # urban, once per metric
    averages = [line.get_xdata()[0] for line in ax.lines]  # the dashed macro means
    assert averages == [report["Average/IoU"], report["Average/F1-Score"]]
    assert averages == pytest.approx([0.5625, 0.717948717948718])
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    figure_to_rgb(fig)  # renders with NaN bars


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


def test_learning_curves_number_epochs_from_1_with_the_test_on_the_last_epoch() -> None:
    """Epochs as the console counts them: Lightning's epoch 0 is drawn at 1, and the test,
    recorded after fit (current_epoch == epochs done), on the last epoch, not after it."""
    rows = [
        {"phase": "train", "step": 2, "epoch": 0, "loss": 1.2},
        {"phase": "val", "step": 2, "epoch": 0, "loss": 1.0},
        {"phase": "train", "step": 4, "epoch": 1, "loss": 0.9},
        {"phase": "val", "step": 4, "epoch": 1, "loss": 0.7},
        {"phase": "test", "step": 4, "epoch": 2, "loss": 0.75},
    ]
    lines = {line.get_label(): line for line in learning_curves(rows).axes[0].lines}
    assert list(lines["train"].get_xdata()) == [1.0, 2.0]
    assert list(lines["val"].get_xdata()) == [1.0, 2.0]
    assert list(lines["test"].get_xdata()) == [2.0]
    # by step, nothing is renumbered
    by_step = learning_curves([{k: v for k, v in r.items() if k != "epoch"} for r in rows])
    assert list(by_step.axes[0].lines[0].get_xdata()) == [4.0]  # test first (sorted by phase)
