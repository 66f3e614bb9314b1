"""DDP on the CPU (gloo, 2 processes): one run folder, files written once, metrics synced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_two_epochs_counting_each_val_pixel_once, write_config


@pytest.mark.slow
def test_ddp_two_cpu_processes(demo_config: dict, tmp_path: Path) -> None:
    demo_config["train_setup"].update(epochs=2, batch_size=4)
    demo_config["output_setup"].update(name_exp_log="exp", version_name="ddp", save_top_k=1)
    demo_config["device_setup"].update(accelerator="cpu", num_processes=2, strategy="ddp")
    path = write_config(tmp_path / "ddp.json", demo_config)
    result = subprocess.run(
        [sys.executable, "-m", "landseg.cli.main", "train", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder:") == 1  # printed by rank 0 only

    experiment = tmp_path / "runs" / "exp"
    assert [p.name for p in experiment.iterdir()] == ["ddp"]
    run = experiment / "ddp"
    datamodule = assert_two_epochs_counting_each_val_pixel_once(run, path)
    test = next(iter(json.loads((run / "history_test.json").read_text()).values()))
    datamodule.setup("test")
    assert int(np.sum(test["cm_macro"])) == sum(
        int((item["mask"] >= 0).sum()) for item in datamodule.test_dataset
    )
    assert len(list((run / "predictions").glob("*.tif"))) == len(datamodule.test_dataset)
