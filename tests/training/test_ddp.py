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


@pytest.mark.parametrize("strategy", [None, "ddp_spawn", "ddp_find_unused_parameters_false"])
@pytest.mark.parametrize("freeze", [0, 2])
def test_ddp_accepts_a_frozen_encoder_s_parameters_without_gradient(
    strategy: str | None, freeze: int, demo_config: dict, tmp_path: Path
) -> None:
    """train_setup.freeze_encoder_epochs: DDP is told that some parameters get no gradient
    (its reducer would wait for them and stop at the second step), whichever DDP strategy the
    config names; runs that freeze nothing keep DDP's default, which costs no graph walk."""
    from lightning.pytorch.strategies import DDPStrategy

    from landseg.config.schema import LandsegConfig
    from landseg.runs.folder import RunFolder
    from landseg.training.trainer import build_trainer

    demo_config["train_setup"].update(model_name="resnet18", freeze_encoder_epochs=freeze)
    demo_config["output_setup"]["use_tensorboard"] = False
    demo_config["device_setup"].update(
        accelerator="cpu", num_processes=2, strategy=strategy, precision="32-true"
    )  # resolved before build_trainer is called
    trainer = build_trainer(LandsegConfig.model_validate(demo_config), RunFolder(tmp_path))
    assert isinstance(trainer.strategy, DDPStrategy)
    given = trainer.strategy._ddp_kwargs.get("find_unused_parameters", False)
    assert given is (freeze > 0)
