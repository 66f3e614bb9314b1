"""``landseg export RUN --format encoder``: the trained encoder alone, for another run.

Train-free: an untrained smp U-Net (resnet18, depth 3) with the demo's 4 bands, its batch-norm
statistics set away from their defaults, saved as a run's checkpoint. What is tested is that
the file holds exactly the checkpoint's encoder, under the keys of ``model.encoder``, with the
metadata another run reads (band names, the normalisation it was trained with, where it came
from).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from landseg import __version__
from landseg.cli.main import main
from landseg.config.schema import DataSource
from tests.helpers import demo_task, save_checkpoint

MEAN = [0.31, 0.42, 0.37, 0.5]
STD = [0.12, 0.15, 0.11, 0.2]
NAMES = ["red", "green", "blue", "nir"]
CHECKPOINT = "m-loss-epoch=003-val_loss=0.5000.ckpt"


def smp_task(demo_dir: Path, tmp: Path):
    """A resnet18 smp U-Net of depth 3 with non-default batch-norm statistics."""
    data: dict = {"normalization_weights": {"train": {"mean": MEAN, "std": STD}}}
    if "band_names" in DataSource.model_fields:  # data_source.band_names, where it exists
        data["band_names"] = NAMES
    task = demo_task(demo_dir, tmp, **data)
    hparams = dict(task.hparams)
    hparams["config"]["train_setup"]["model_name"] = "smp:unet"
    hparams["config"]["train_setup"]["model_params"] = {
        "encoder_name": "resnet18",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 4],
    }
    from landseg.tasks.segmentation import SegmentationTask

    torch.manual_seed(1)
    task = SegmentationTask(**hparams).eval()
    generator = torch.Generator().manual_seed(2)
    for module in task.model.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator))
            module.running_var.copy_(1 + torch.rand(module.num_features, generator=generator))
            module.num_batches_tracked.fill_(7)
    return task


def test_encoder_export_holds_the_checkpoints_encoder_and_its_metadata(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    task = smp_task(demo_dir, tmp_path)
    run = tmp_path / "exp" / "v1"
    checkpoint = save_checkpoint(task, run / "checkpoints" / CHECKPOINT)
    (run / "run.json").write_text(json.dumps({"status": "finished", "best": {"val_loss": 0.5}}))
    assert main(["export", str(run), "--format", "encoder"]) == 0
    path = run / "exports" / "m-encoder.safetensors"
    assert capsys.readouterr().out.strip() == f"written: {path}"
    assert sorted(p.name for p in (run / "exports").iterdir()) == [path.name]  # no STAC item

    tensors = load_file(path)
    expected = task.model.encoder.state_dict()
    assert sorted(tensors) == sorted(expected) and len(tensors) > 40
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    assert tensors["bn1.running_mean"].dtype == torch.float32
    assert not any(key.startswith("encoder.") for key in tensors)

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    names = {"band_names": json.dumps(NAMES)} if "band_names" in DataSource.model_fields else {}
    assert meta == {
        "format": "landseg-encoder",
        "format_version": "1",
        "encoder_name": "resnet18",
        "model_name": "smp:unet",
        "in_channels": "4",
        "pixel_range": "255.0",
        "mean": json.dumps(MEAN),
        "std": json.dumps(STD),
        "source_run": str(run.absolute()),
        "source_checkpoint": CHECKPOINT,
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "landseg_version": __version__,
        **names,
    }


def test_a_model_without_an_encoder_is_refused(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    task = demo_task(demo_dir, tmp_path)  # landseg's lightunet
    run = tmp_path / "run"
    save_checkpoint(task, run / "checkpoints" / "c-last.ckpt")
    (run / "run.json").write_text(json.dumps({"status": "finished"}))
    assert main(["export", str(run), "--format", "encoder"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model 'lightunet' has no separate encoder" in err[0]
    assert not (run / "exports").exists()
