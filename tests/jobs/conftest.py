"""Cross-validation job configs on the generated demo data (3 zones of 8 tiles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def cv_config(demo_dir: Path, output: Path, **cross_validation: Any) -> dict[str, Any]:
    """A tiny lightunet job: zone 1 held out, zones 2 and 3 in turn validate (2 tasks), 2 epochs."""
    config = json.loads((demo_dir / "demo.json").read_text())
    data = config["data_source"]
    data.pop("val_file")
    data.pop("test_file")
    data["train_file"] = str(demo_dir / "zones.csv")
    config["train_setup"].update(epochs=2, batch_size=4)
    config["output_setup"].update(
        output_folder=str(output),
        name_exp_log="job",
        use_tensorboard=False,
        get_prediction=False,
        progress=0,
        save_top_k=1,
    )
    config["cross_validation"] = {"group_column": "zone", "test_groups": ["1"]}
    config["cross_validation"].update(cross_validation)
    return config


@pytest.fixture
def make_cv_config(demo_dir: Path, tmp_path: Path):
    def make(**cross_validation: Any) -> dict[str, Any]:
        return cv_config(demo_dir, tmp_path / "runs", **cross_validation)

    return make
