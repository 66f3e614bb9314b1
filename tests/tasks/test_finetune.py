"""Fine-tuning controls on a tiny smp U-Net (ResNet-18 encoder, depth 3): the encoder's learning
rate stays ``encoder_lr_factor`` times the rest's through every optimiser and scheduler, a
frozen encoder takes no step from any optimiser and keeps its running statistics, and the keys
are refused for models without an encoder."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from landseg.callbacks.freeze_encoder import FreezeEncoder, normalisation_layers
from landseg.config.schema import LandsegConfig
from landseg.tasks.finetune import finetune_problems
from landseg.tasks.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, scheduler_problems
from landseg.tasks.segmentation import SegmentationTask

LR, FACTOR = 0.01, 0.1
#: scheduler arguments under which the learning rates move within a few steps
MOVING: dict[str, dict[str, Any]] = {
    # decays at every step without improvement, down to its floor after three
    "reducelronplateau": {"patience": 0, "cooldown": 0, "min_lr": LR / 8},
    "cycliclr": {"step_size_up": 2},
    "cosineannealinglr": {},
    "cosineannealingwarmrestarts": {"T_0": 3},
}
STEPS = 6


def config(**train_setup: Any) -> dict[str, Any]:
    return LandsegConfig.model_validate(
        {
            "data_source": {"train_file": "/d/t.csv", "class_labels": ["a", "b"]},
            "train_setup": {
                "model_name": "smp:unet",
                "model_params": {"encoder_name": "resnet18", "encoder_depth": 3,
                                 "decoder_channels": [16, 8, 4]},
                "lr": LR,
                "epochs": 4,
                **train_setup,
            },
            "output_setup": {"output_folder": "/o"},
        }
    ).model_dump(mode="json")  # fmt: skip


@pytest.fixture(scope="module")
def task() -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(config(), 4, ["a", "b"])


def with_config(task: SegmentationTask, **train_setup: Any) -> SegmentationTask:
    task.config = LandsegConfig.model_validate(config(**train_setup))
    return task


def train_step(task: SegmentationTask, optimizer: torch.optim.Optimizer) -> None:
    image = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = (image[:, 0] > 0.5).long()
    task.loss_fn(task(image), mask).backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS.names()))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS.names()))
def test_the_encoder_s_lr_stays_the_factor_times_the_rest_s(
    task: SegmentationTask, optimizer: str, scheduler: str
) -> None:
    """Every scheduler keeps the ratio while the learning rates move (floors included), over
    every optimiser's groups (their steps over two groups, fused ones included, are taken in
    the frozen-encoder test below)."""
    with_config(
        task,
        encoder_lr_factor=FACTOR,
        optimizer_config={"optimizer": optimizer},
        scheduler_config={"scheduler": scheduler, **MOVING[scheduler]},
    )
    configured = task.configure_optimizers()
    built, lr_scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rest_group, encoder_group = built.param_groups  # the first is the one runs report
    assert {id(p) for p in encoder_group["params"]} == {
        id(p) for p in task.model.encoder.parameters()
    }
    assert encoder_group["name"] == "encoder" and rest_group["name"] == "rest"
    rates = set()
    for _ in range(STEPS):
        built.step()  # no gradient: nothing moves, but the scheduler is stepped after it
        if scheduler == "reducelronplateau":
            lr_scheduler.step(1.0)  # no improvement
        else:
            lr_scheduler.step()
        encoder_lr, rest_lr = encoder_group["lr"], rest_group["lr"]
        assert encoder_lr == pytest.approx(FACTOR * rest_lr, rel=1e-12, abs=0)
        rates.add(rest_lr)
    assert len(rates) > 2  # the schedule moved


def test_factor_one_keeps_the_one_group_of_before(task: SegmentationTask) -> None:
    """Without a factor the optimiser is what it always was: one group, every parameter in
    the module's order, and the same state_dict layout (checkpoints of earlier runs load)."""
    with_config(task, freeze_encoder_epochs=3)
    configured = task.configure_optimizers()["optimizer"]
    before = build_optimizer("adam", task.parameters(), LR, {})
    assert len(configured.param_groups) == 1
    assert configured.state_dict()["param_groups"] == before.state_dict()["param_groups"]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS.names()))
def test_a_frozen_encoder_takes_no_step_and_keeps_its_running_statistics(
    task: SegmentationTask, optimizer: str
) -> None:
    """Every optimiser, over the two groups (fused where landseg makes it so), weight decay
    included; Lightning putting the network back in train mode between batches is undone at
    the next batch's start. Then, from the boundary on, the encoder trains."""
    with_config(
        task,
        freeze_encoder_epochs=1,
        encoder_lr_factor=0.5,
        optimizer_config={"optimizer": optimizer, "weight_decay": 0.1},
    )
    built = task.configure_optimizers()["optimizer"]
    encoder = {k: v.clone() for k, v in task.model.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in task.model.decoder.state_dict().items()}
    freeze, trainer = FreezeEncoder(1), SimpleNamespace(current_epoch=0)
    task.train()
    freeze.on_train_epoch_start(trainer, task)  # type: ignore[arg-type]
    for batch in range(2):
        task.train()  # as after a validation, or another callback
        freeze.on_train_batch_start(trainer, task, None, batch)  # type: ignore[arg-type]
        assert not any(layer.training for layer in normalisation_layers(task.model.encoder))
        train_step(task, built)
    for key, value in task.model.encoder.state_dict().items():
        assert torch.equal(value, encoder[key]), key
    assert any(not torch.equal(v, decoder[k]) for k, v in task.model.decoder.state_dict().items())
    trainer.current_epoch = 1  # the boundary: trained again, in train mode
    freeze.on_train_epoch_start(trainer, task)  # type: ignore[arg-type]
    assert all(p.requires_grad for p in task.model.encoder.parameters())
    assert all(layer.training for layer in normalisation_layers(task.model.encoder))
    train_step(task, built)
    assert not torch.equal(task.model.encoder.conv1.weight, encoder["conv1.weight"])
    assert not torch.equal(task.model.encoder.bn1.running_mean, encoder["bn1.running_mean"])


def test_models_without_an_encoder_are_refused_naming_the_key() -> None:
    assert finetune_problems("lightunet", 2, 1.0) == [
        "train_setup.freeze_encoder_epochs 2: model 'lightunet' has no encoder to freeze or to "
        "train at another learning rate (it is one network); use an encoder model "
        "(resnet18..resnet152, deeplab, smp:<Architecture>) or leave the key out"
    ]
    assert [line.split(":")[0] for line in finetune_problems("unet", 1, 0.5)] == [
        "train_setup.freeze_encoder_epochs 1",
        "train_setup.encoder_lr_factor 0.5",
    ]
    assert finetune_problems("unet", 0, 1.0) == []
    for name in ("resnet18", "deeplab", "smp:segformer"):
        assert finetune_problems(name, 2, 0.5) == []


@pytest.mark.parametrize("name", ["cosineannealinglr", "cosineannealingwarmrestarts"])
def test_a_shared_eta_min_is_refused_with_a_factor(name: str) -> None:
    """eta_min is one value for every group: the ratio could not hold near it."""
    (line,) = scheduler_problems(name, {"eta_min": 1e-4}, LR, 8, encoder_lr_factor=0.1)
    assert line.startswith("train_setup.scheduler_config.eta_min: ")
    assert "encoder_lr_factor 0.1" in line
    assert scheduler_problems(name, {"eta_min": 1e-4}, LR, 8) == []
    assert scheduler_problems(name, {"eta_min": 0.0}, LR, 8, encoder_lr_factor=0.1) == []
