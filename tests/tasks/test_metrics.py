"""Metrics against values computed by hand (docs/metrics.md, worked example)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from landseg.tasks.metrics import (
    SegmentationMetrics,
    class_indices,
    metrics_from_confusion,
    miou,
)

CM = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
LABELS = ["a", "b", "c"]

# Per class, by hand from CM (N = 16):
#   a: TP 5, FN 1, FP 2, TN 8    b: TP 3, FN 3, FP 1, TN 9    c: TP 4, FN 0, FP 1, TN 11
EXPECTED = {
    "a/Accuracy": 13 / 16,
    "b/Accuracy": 12 / 16,
    "c/Accuracy": 15 / 16,
    "a/Precision": 5 / 7,
    "b/Precision": 3 / 4,
    "c/Precision": 4 / 5,
    "a/Recall": 5 / 6,
    "b/Recall": 3 / 6,
    "c/Recall": 4 / 4,
    "a/F1-Score": 10 / 13,
    "b/F1-Score": 6 / 10,
    "c/F1-Score": 8 / 9,
    "a/IoU": 5 / 8,
    "b/IoU": 3 / 7,
    "c/IoU": 4 / 5,
    "Average/Accuracy": 40 / 48,
    "Average/Precision": 0.7547619047619047,  # (5/7 + 3/4 + 4/5) / 3
    "Average/Recall": 0.7777777777777778,  # (5/6 + 1/2 + 1) / 3
    "Average/F1-Score": 0.7527065527065527,  # (10/13 + 3/5 + 8/9) / 3
    "Average/IoU": 0.6178571428571429,  # (5/8 + 3/7 + 4/5) / 3
    "Overall/Accuracy": 12 / 16,
    "Overall/Precision": 12 / 16,
    "Overall/Recall": 12 / 16,
    "Overall/F1-Score": 12 / 16,
    "Overall/IoU": 12 / 20,
}


def _assert_values(entries: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert entries[key] == pytest.approx(value, abs=1e-12), key


def test_hand_computed_three_classes() -> None:
    entries = metrics_from_confusion(CM, LABELS)
    assert entries["cm_macro"] == [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    assert entries["cm_micro"] == [[12, 4], [4, 28]]
    _assert_values(entries, EXPECTED)
    assert miou(CM) == pytest.approx(0.6178571428571429, abs=1e-12)


def test_keys_follow_odeon_order_and_are_json_ready() -> None:
    entries = metrics_from_confusion(CM, LABELS)
    keys = list(entries)
    assert keys[:2] == ["cm_macro", "cm_micro"]
    assert keys[2:7] == [
        "Overall/Accuracy",
        "Average/Accuracy",
        "a/Accuracy",
        "b/Accuracy",
        "c/Accuracy",
    ]
    assert len(keys) == 2 + 5 * (2 + 3)
    json.dumps(entries, allow_nan=False)
    assert all(type(v) is float for k, v in entries.items() if not k.startswith("cm_"))


def test_absent_class_is_null_and_left_out_of_averages() -> None:
    cm = np.zeros((4, 4), dtype=np.int64)
    cm[:3, :3] = CM
    entries = metrics_from_confusion(cm, [*LABELS, "d"])
    for name in ("Accuracy", "Precision", "Recall", "F1-Score", "IoU"):
        assert entries[f"d/{name}"] is None
    _assert_values(entries, EXPECTED)  # same averages and overall as without the class
    assert entries["cm_micro"] == [[12, 4], [4, 44]]  # d adds 16 true negatives
    assert miou(cm) == pytest.approx(0.6178571428571429, abs=1e-12)
    json.dumps(entries, allow_nan=False)


def test_zero_denominators_of_present_classes_are_zero() -> None:
    # class x: 3 right, 1 predicted as y; y never in the targets.
    cm = np.array([[3, 1], [0, 0]])
    entries = metrics_from_confusion(cm, ["x", "y"])
    _assert_values(
        entries,
        {
            "x/Precision": 1.0,
            "x/Recall": 0.75,
            "x/IoU": 0.75,
            "y/Accuracy": 0.75,
            "y/Precision": 0.0,
            "y/Recall": 0.0,
            "y/F1-Score": 0.0,
            "y/IoU": 0.0,
            "Average/IoU": 0.375,
            "Overall/IoU": 3 / 5,
        },
    )
    assert miou(cm) == pytest.approx(0.375)


def test_empty_matrix_is_all_null() -> None:
    entries = metrics_from_confusion(np.zeros((2, 2)), ["x", "y"])
    assert entries["cm_micro"] == [[0, 0], [0, 0]]
    assert all(v is None for k, v in entries.items() if not k.startswith("cm_"))
    assert math.isnan(miou(np.zeros((2, 2))))


def test_label_count_must_match() -> None:
    with pytest.raises(ValueError, match="class labels"):
        metrics_from_confusion(CM, ["a", "b"])


def _pairs_from(cm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, pred) pixel lists realising a confusion matrix."""
    true, pred = [], []
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            true += [i] * int(count)
            pred += [j] * int(count)
    return torch.tensor(true), torch.tensor(pred)


def test_metric_counts_labels_and_ignores_minus_one() -> None:
    true, pred = _pairs_from(CM)  # 16 pixels
    target = torch.cat([true, torch.full((4,), -1)]).reshape(1, 4, 5)
    preds = torch.cat([pred, torch.tensor([0, 1, 2, 0])]).reshape(1, 4, 5)
    metric = SegmentationMetrics(num_classes=3)
    metric.update(preds, target)
    assert metric.compute().tolist() == CM.tolist()


def test_metric_takes_logits() -> None:
    true, pred = _pairs_from(CM)
    logits = torch.nn.functional.one_hot(pred, 3).float().T.reshape(1, 3, 4, 4) * 5.0
    metric = SegmentationMetrics(num_classes=3)
    metric.update(logits, true.reshape(1, 4, 4))
    assert metric.compute().tolist() == CM.tolist()


def test_accumulation_over_batches_equals_one_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 8, 8, generator=gen)
    target = torch.randint(-1, 4, (6, 8, 8), generator=gen)
    whole = SegmentationMetrics(num_classes=4)
    whole.update(logits, target)
    split = SegmentationMetrics(num_classes=4)
    for start in range(0, 6, 2):
        split.update(logits[start : start + 2], target[start : start + 2])
    assert torch.equal(split.compute(), whole.compute())
    assert int(whole.compute().sum()) == int((target != -1).sum())
    split.reset()
    assert int(split.confmat.sum()) == 0


def test_metric_rejects_bad_inputs() -> None:
    metric = SegmentationMetrics(num_classes=3)
    with pytest.raises(ValueError, match="target values"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="channels"):
        metric.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        metric.update(
            torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long)
        )


def test_class_indices_equal_argmax_ties_included() -> None:
    scores = torch.randint(0, 3, (4, 5, 16, 16)).float()  # many tied maxima
    assert torch.equal(class_indices(scores), scores.argmax(dim=1))
