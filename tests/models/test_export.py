"""Exported networks load without landseg and compute what the task computes.

TorchScript is traced on a 64x64 example, so it is run here on another batch size and another
size multiple (64x96): a trace that froze the example's shape would fail or differ. The ``.pth``
state dict loads with ``weights_only=True`` into a freshly built network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from landseg.config.schema import LandsegConfig
from landseg.models.export import export_model
from landseg.tasks.segmentation import SegmentationTask

BATCH, HEIGHT, WIDTH = 2, 64, 96  # not the 1x64x64 of the trace

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


def _task(demo_config: dict, batch_norm: bool, seed: int = 0) -> SegmentationTask:
    """An untrained lightunet task with the demo's 4 bands and 4 classes, in eval mode."""
    demo_config["train_setup"].update(
        model_name="lightunet", model_params={"batch_norm": batch_norm}
    )
    config = LandsegConfig.model_validate(demo_config).model_dump(mode="json")
    torch.manual_seed(seed)
    task = SegmentationTask(config, 4, config["data_source"]["class_labels"])
    return task.eval()


def _export(task: SegmentationTask, fmt: str, stem: Path) -> Path:
    return export_model(task.model, task.hparams.in_channels, fmt, stem)


def _input(task: SegmentationTask) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, task.hparams.in_channels, HEIGHT, WIDTH, generator=generator)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_torchscript_runs_like_the_task(demo_config: dict, tmp_path: Path, batch_norm: bool):
    task = _task(demo_config, batch_norm)
    image = _input(task)
    with torch.no_grad():
        expected = task.model(image)
        assert torch.equal(task(image), expected)  # a size multiple: no padding in the task
    path = _export(task, "torchscript", tmp_path / "lightunet-best")
    assert path == tmp_path / "lightunet-best.torchscript.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left

    scripted = torch.jit.load(str(path), map_location="cpu")
    assert isinstance(scripted, torch.jit.ScriptModule)
    with torch.no_grad():
        logits = scripted(image)
    assert logits.shape == (BATCH, len(task.class_labels), HEIGHT, WIDTH) == (2, 4, 64, 96)
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    with torch.no_grad():  # and at the traced example's size
        small = image[:1, :, :64, :64]
        assert torch.allclose(scripted(small), task.model(small), atol=1e-5)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_pth_loads_into_a_fresh_network(demo_config: dict, tmp_path: Path, batch_norm: bool):
    task = _task(demo_config, batch_norm)
    if batch_norm:  # running statistics are buffers of the state dict: make them non-trivial
        for layer in task.model.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    image = _input(task)
    path = _export(task, "pth", tmp_path / "lightunet-best")
    assert path == tmp_path / "lightunet-best.pth"

    state = torch.load(path, weights_only=True, map_location="cpu")
    assert state.keys() == task.model.state_dict().keys()
    fresh = _task(demo_config, batch_norm, seed=1).model  # other initial weights
    with torch.no_grad():
        expected = task.model(image)
        assert not torch.allclose(fresh(image), expected, atol=1e-5)
        fresh.load_state_dict(state)  # strict: every key, no extra one
        logits = fresh(image)
    assert logits.shape == (BATCH, len(task.class_labels), HEIGHT, WIDTH)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_unknown_format_is_refused(demo_config: dict, tmp_path: Path) -> None:
    task = _task(demo_config, batch_norm=False)
    with pytest.raises(ValueError, match="onnx"):
        _export(task, "onnx", tmp_path / "lightunet-best")
    assert list(tmp_path.iterdir()) == []
