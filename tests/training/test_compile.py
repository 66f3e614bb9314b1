"""``train_setup.compile: true`` compiles the network for training (torch.compile's graphs
are counted) without changing what a run leaves: checkpoints with the plain network's keys
(no ``_orig_mod.``), a continued run, an export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from landseg.cli.main import main
from landseg.models.registry import build_model
from tests.helpers import write_config

pytestmark = pytest.mark.slow


def test_a_compiled_run_checkpoints_continues_and_exports(
    demo_config: dict, tmp_path: Path
) -> None:
    demo_config["train_setup"].update(epochs=1, batch_size=4, compile=True)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="compiled", use_tensorboard=False, get_prediction=False
    )
    demo_config["data_source"].pop("test_file")
    demo_config["device_setup"]["precision"] = "32-true"
    counters.clear()
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 0
    # the network really went through torch.compile (the rest would pass without it)
    assert counters["stats"]["unique_graphs"] >= 1 and counters["frames"]["ok"] >= 1
    run = tmp_path / "runs" / "exp" / "compiled"
    (last,) = (run / "checkpoints").glob("*-last.ckpt")
    keys = {
        k.removeprefix("model.")
        for k in torch.load(last, weights_only=True)["state_dict"]
        if k.startswith("model.")
    }
    plain = build_model("lightunet", 4, 4, {})  # the demo: 4 bands, 4 classes
    assert keys == set(plain.state_dict())

    demo_config["train_setup"].update(epochs=2, continue_training=True)
    assert main(["train", "-c", str(write_config(tmp_path / "more.json", demo_config))]) == 0
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 2
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    assert list((run / "exports").glob("*.pt"))
