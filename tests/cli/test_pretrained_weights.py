"""`landseg validate` and `landseg train` with ``model_params.encoder_weights`` a local file:
a wrong file is the same one line from both, exit 2, and no run folder; a good one is loaded
and recorded in run.json (name, size, SHA-256, tensors, band mapping)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import RGB, SMALL_RESNET18, bad_files, run_cli, timm_resnet18, write_config


def test_wrong_weights_files_refused_before_any_run_folder(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Another architecture, a text file, a missing file, a pickle that would run code, a file
    without tensors: one line each, naming the file, from validate and train alike (exit 2);
    the path is read relative to the config file's folder."""
    folder = tmp_path / "config"
    (folder / "weights").mkdir(parents=True)
    runs = Path(demo_config["output_setup"]["output_folder"])
    for kind, (path, expected) in bad_files(folder / "weights").items():
        demo_config["train_setup"].update(
            model_name="resnet18", model_params={"encoder_weights": f"weights/{path.name}"}
        )
        config = write_config(folder / "config.json", demo_config)
        validated = run_cli(["validate", "-c", str(config)], capsys)
        trained = run_cli(["train", "-c", str(config)], capsys)
        assert trained[0] == 2 and trained == validated, (kind, trained, validated)
        lines = trained[1].strip().splitlines()
        assert len(lines) == 1, (kind, lines)
        assert expected in lines[0] and str(path) in lines[0], (kind, lines[0])
        assert not runs.exists(), kind  # nothing written
    assert not (folder / "weights" / "ran").exists()  # the pickle's code never ran


def test_band_names_must_fit_the_bands(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["data_source"]["band_names"] = ["blue", "green", "red"]  # 4 bands read
    code, err = run_cli(
        ["validate", "-c", str(write_config(tmp_path / "c.json", demo_config))], capsys
    )
    assert code == 2
    assert "data_source.band_names: 3 names but image_bands selects 4 bands" in err
    demo_config["data_source"]["band_names"] = ["blue", "green", "red", "red"]
    code, err = run_cli(
        ["validate", "-c", str(write_config(tmp_path / "c.json", demo_config))], capsys
    )
    assert code == 2 and "data_source.band_names" in err and "repeated: red" in err


@pytest.mark.slow
def test_training_starts_from_the_file_and_records_it(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    """One epoch of a small U-Net whose ResNet-18 encoder starts from an RGB safetensors file
    (band names in its metadata, given as ~/...) on the demo's blue, green, red, nir."""
    monkeypatch.setenv("HOME", str(tmp_path))
    sd = {k: v.contiguous() for k, v in timm_resnet18().items()}
    weights = tmp_path / "rgb.safetensors"
    save_file(sd, weights, metadata={"band_names": json.dumps(RGB)})
    demo_config["data_source"]["band_names"] = ["blue", "green", "red", "nir"]
    demo_config["data_source"].pop("test_file")
    demo_config["train_setup"].update(
        model_name="smp:unet",
        model_params={**SMALL_RESNET18, "encoder_weights": "~/rgb.safetensors"},
        epochs=1,
        export_checkpoint="torchscript",
    )
    demo_config["output_setup"].update(
        use_tensorboard=False, get_prediction=False, name_exp_log="e", version_name="v"
    )
    config = write_config(tmp_path / "config.json", demo_config)
    code, err = run_cli(["train", "-c", str(config)], capsys)
    assert code == 0, err
    run = Path(demo_config["output_setup"]["output_folder"]) / "e" / "v"
    record = json.loads((run / "run.json").read_text())["encoder_weights"]
    assert record["file"] == "rgb.safetensors" and record["size"] == weights.stat().st_size
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["loaded"] == record["total"] == 100 and record["missing"] == []
    assert record["bands"]["mapping"] == {
        "blue": "blue",
        "green": "green",
        "red": "red",
        "nir": "mean",
    }
    assert record["bands"]["factor"] == 0.75
    assert "encoder weights from" in (run / "train.log").read_text()
    extra = {"landseg_checkpoint.json": ""}  # the checkpoint's TorchScript export says it too
    torch.jit.load(next((run / "checkpoints").glob("*.torchscript.pt")), _extra_files=extra)
    exported = json.loads(extra["landseg_checkpoint.json"])["encoder_weights"]
    assert exported["file"] == "rgb.safetensors" and exported["sha256"] == record["sha256"]
    # the network is rebuilt from the checkpoint without the file (moved away here), and
    # the run continues without it
    weights.unlink()
    demo_config["train_setup"].update(continue_training=True, epochs=2)
    config = write_config(tmp_path / "config.json", demo_config)
    code, err = run_cli(["validate", "-c", str(config)], capsys)
    assert code == 0, err
    from landseg.tasks.segmentation import SegmentationTask

    (checkpoint,) = (run / "checkpoints").glob("*-last.ckpt")
    task = SegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    assert torch.equal(
        task.model.encoder.conv1.weight,
        torch.load(checkpoint, weights_only=True)["state_dict"]["model.encoder.conv1.weight"],
    )


def test_validate_prints_the_weights_plan(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The file, the tensors that load, the band mapping and the fine-tuning controls are in
    validate's plan, before any training."""
    weights = tmp_path / "rgb.safetensors"
    sd = {k: v.contiguous() for k, v in timm_resnet18().items()}
    save_file(sd, weights, metadata={"band_names": json.dumps(RGB)})
    demo_config["data_source"]["band_names"] = ["blue", "green", "red", "nir"]
    demo_config["train_setup"].update(
        model_name="smp:unet",
        model_params={**SMALL_RESNET18, "encoder_weights": str(weights)},
        epochs=3,
        freeze_encoder_epochs=5,
        encoder_lr_factor=0.1,
    )
    config = write_config(tmp_path / "config.json", demo_config)
    from landseg.cli.main import main

    code = main(["validate", "-c", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out
    loads = "100 of 100 tensors load, 0 missing, 2 unused"
    assert f"encoder weights from {weights} (file): {loads}" in out
    assert (
        "first convolution conv1.weight: band names rule, blue <- blue, green <- green, "
        "red <- red, nir <- mean, kernels x 0.75" in out
    )
    assert "encoder frozen for the first 5 epochs (the whole run)" in out
    assert "encoder learning rate 0.1 x the rest's" in out
