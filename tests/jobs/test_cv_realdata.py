"""Leave-one-zone-out on the real Dubai tiles (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from landseg.cli.main import main
from tests.helpers import write_config

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

DUBAI_LABELS = ["building", "land", "road", "vegetation", "water", "unlabeled"]


def test_dubai_three_zones_with_rotations(shared_data: Path, tmp_path: Path) -> None:
    config = {
        "data_source": {
            "train_file": str(shared_data / "dubai-aerial" / "zones.csv"),
            "mask_bands": [1, 2, 3, 4, 5, 6],
            "class_labels": DUBAI_LABELS,
        },
        "train_setup": {
            "model_name": "lightunet",
            "epochs": 1,
            "batch_size": 8,
            "testing": True,
            "random_seed": 0,
        },
        "output_setup": {
            "output_folder": str(tmp_path / "runs"),
            "name_exp_log": "dubai",
            "use_tensorboard": False,
            "get_prediction": False,
            "progress": 0,
            "save_top_k": 1,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": 0},
        "cross_validation": {
            "group_pattern": r"img/(zone\d+)_",
            "groups": ["zone1", "zone2", "zone3"],
            "test_groups": ["zone2"],  # 2 rotations: 1 epoch each on 8 tiles keeps it short
        },
    }
    assert main(["cv", "-c", str(write_config(tmp_path / "cv.json", config))]) == 0
    job = tmp_path / "runs" / "dubai"
    summary = json.loads((job / "summary.json").read_text())
    assert summary["complete"] and summary["groups"] == ["zone1", "zone2", "zone3"]
    assert list(summary["tasks"]) == ["test-zone2__val-zone1", "test-zone2__val-zone3"]
    stats = summary["test_subjects"]["zone2"]["metrics"]["Average/IoU"]
    assert stats["n"] == 2 and 0 <= stats["mean"] <= 1
    task = job / "tasks" / "test-zone2__val-zone1"
    test_rows = (task / "test.csv").read_text().splitlines()
    assert len(test_rows) == 18 and all("/zone2_" in row for row in test_rows)
    train_rows = (task / "train.csv").read_text().splitlines()
    assert len(train_rows) == 36 and all("/zone3_" in row for row in train_rows)
    assert json.loads((task / "run.json").read_text())["epochs_done"] == 1
