"""Fine-tuning controls end to end, on an smp U-Net of depth 3 with timm's ResNet-18 encoder
(timm's keeps only the stages used: checkpoints of 3 MB, not smp's own ResNet's 45) and 32x32
tiles: an encoder frozen for the whole run ends exactly as it started (weights and running
statistics), one frozen for its first epoch is trained from the second, and a run killed on
either side of that boundary continues to the uninterrupted run's end, bit for bit (float32,
pinned)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from landseg.cli.main import main
from landseg.planning.prepare import prepare
from landseg.training.run import train
from tests.helpers import assert_same_end, sigkill_when, stop_and_resume_config, write_config

MODEL = {
    "model_name": "smp:unet",
    "model_params": {"encoder_name": "tu-resnet18", "encoder_depth": 3,
                     "decoder_channels": [16, 8, 4]},
}  # fmt: skip
LAST = "smp-unet-last.ckpt"


def finetune_config(demo_dir: Path, output: Path, **train_setup: Any) -> dict[str, Any]:
    """The demo's config as the resume tests train it (float32, deterministic, batch 4: 4
    steps an epoch), with the small U-Net, 2 epochs and ``train_setup``."""
    config = json.loads((demo_dir / "demo.json").read_text())
    for key in ("train_file", "val_file"):
        config["data_source"][key] = str(demo_dir / config["data_source"][key])
    config["output_setup"].update(
        output_folder=str(output), name_exp_log="exp", version_name="v", progress=0
    )
    config = stop_and_resume_config(config)
    config["train_setup"].update(MODEL, **{"epochs": 2, **train_setup})
    return config


class NetworkStates(Callback):
    """The network's tensors (weights and running statistics) when fitting starts, and at each
    training epoch's end."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def _keep(self, pl_module: Any) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._keep(pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._keep(pl_module)


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def changed(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> set[str]:
    assert after.keys() == before.keys()
    return {key for key, value in before.items() if not torch.equal(after[key], value)}


@pytest.mark.slow
def test_an_encoder_frozen_for_the_whole_run_ends_exactly_as_it_started(
    demo_dir: Path, tmp_path: Path
) -> None:
    """freeze_encoder_epochs beyond epochs (a linear probe): the last checkpoint's encoder is
    the network's at the start, running statistics and their batch counts included, while the
    decoder trained; run.json records the settings. A validation in the middle of the epoch
    puts the network in eval mode and back: the batches after it still leave the encoder's
    statistics alone."""
    config = finetune_config(
        demo_dir,
        tmp_path / "runs",
        epochs=1,
        freeze_encoder_epochs=5,
        encoder_lr_factor=0.5,
        val_check_interval=0.5,
    )
    states = NetworkStates()
    prepared = prepare(write_config(tmp_path / "c.json", config), [])
    run = train(prepared.config, prepared.summary, extra_callbacks=[states])
    initial = states.states[0]
    last = part(torch.load(run / "checkpoints" / LAST, weights_only=True)["state_dict"], "model.")
    encoder = part(initial, "encoder.")
    assert any(k.endswith("running_mean") for k in encoder)
    assert any(k.endswith("num_batches_tracked") for k in encoder)
    assert changed(part(last, "encoder."), encoder) == set()
    assert changed(part(last, "decoder."), part(initial, "decoder."))
    state = json.loads((run / "run.json").read_text())
    assert state["fine_tuning"] == {"freeze_encoder_epochs": 5, "encoder_lr_factor": 0.5}
    assert state["status"] == "finished"


@pytest.fixture(scope="module")
def unfrozen_at_one(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path, NetworkStates]:
    """The uninterrupted run whose encoder is frozen for epoch 0 of 2 (a step checkpoint every
    2 steps: at step 2, in epoch 0, and 6, in epoch 1): its config, folder and states."""
    folder = tmp_path_factory.mktemp("unfrozen")
    config = finetune_config(
        demo_dir, folder / "runs", freeze_encoder_epochs=1, checkpoint_every_n_steps=2
    )
    states = NetworkStates()
    prepared = prepare(write_config(folder / "c.json", config), [])
    return config, train(prepared.config, prepared.summary, extra_callbacks=[states]), states


@pytest.mark.slow
def test_an_encoder_frozen_for_one_epoch_is_trained_from_the_next(
    unfrozen_at_one: tuple[dict[str, Any], Path, NetworkStates],
) -> None:
    _, _, recorded = unfrozen_at_one
    initial, first, second = recorded.states
    assert changed(part(first, "encoder."), part(initial, "encoder.")) == set()
    assert changed(part(first, "decoder."), part(initial, "decoder."))
    trained = changed(part(second, "encoder."), part(first, "encoder."))
    assert {"model.conv1.weight", "model.bn1.running_mean", "model.bn1.num_batches_tracked"} <= (
        trained
    )


@pytest.mark.slow
def test_killed_on_both_sides_of_the_unfreeze_boundary_then_continued_equals_uninterrupted(
    unfrozen_at_one: tuple[dict[str, Any], Path, NetworkStates], tmp_path: Path
) -> None:
    """SIGKILLed once the step checkpoint of the frozen epoch 0 is written, continued and
    SIGKILLed again once epoch 1's is, then continued: frozen again where the run was, trained
    from the boundary on, and the end is the uninterrupted run's (weights, optimiser and
    metric states, history, checkpoints)."""
    reference_config, reference, _ = unfrozen_at_one
    config = json.loads(json.dumps(reference_config))
    config["output_setup"]["output_folder"] = str(tmp_path / "runs")
    run = tmp_path / "runs" / "exp" / "v"
    started = write_config(tmp_path / "started.json", config)
    config["train_setup"]["continue_training"] = True
    continued = write_config(tmp_path / "continued.json", config)
    for config_path, step in ((started, 2), (continued, 6)):  # in epoch 0, then in epoch 1
        written = run / "checkpoints" / f"smp-unet-step={step:07d}.ckpt"
        assert sigkill_when(["train", "-c", str(config_path)], written.exists) == -signal.SIGKILL
    assert main(["train", "-c", str(continued)]) == 0
    assert len(json.loads((run / "run.json").read_text())["resumed"]) == 2
    assert_same_end(run, reference)
