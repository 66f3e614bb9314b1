"""A run that starts from a weights file with its encoder frozen for the whole run (a linear
probe) ends with exactly the file's encoder: every tensor, running statistics included, and
the first convolution mapped to the image's bands as docs/pretrained.md says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import RGB, S2, run_cli, timm_resnet18, write_config

#: A small U-Net on timm's ResNet-18 cut after its second stage (0.7 M parameters): smp's
#: keeps the unused stages, 11 M parameters to train and checkpoint.
MODEL_PARAMS = {"encoder_name": "tu-resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}
#: The demo's bands, in file order.
DEMO_BANDS = ["blue", "green", "red", "nir"]


def _three_to_four_by_name(conv: torch.Tensor) -> torch.Tensor:
    """RGB weights on blue, green, red, nir: reordered, nir the mean kernel, all times 3/4."""
    red, green, blue = conv[:, 0], conv[:, 1], conv[:, 2]
    return torch.stack([blue, green, red, conv.mean(dim=1)], dim=1) * (3 / 4)


def _thirteen_to_four_reordered(conv: torch.Tensor) -> torch.Tensor:
    """Sentinel-2 weights on B04, B03, B02, B08: each its own kernel, all times 13/4."""
    return torch.stack([conv[:, S2.index(b)] for b in ("B04", "B03", "B02", "B08")], 1) * (13 / 4)


def _three_to_one(conv: torch.Tensor) -> torch.Tensor:
    """One band, no names: smp's rule, the sum of the three kernels."""
    return conv.sum(dim=1, keepdim=True)


CASES = {
    # name: (weights' bands, metadata band names?, image_bands, band_names, expected first conv)
    "3->4 by name": (3, RGB, None, DEMO_BANDS, _three_to_four_by_name),
    "13->4 reordered": (13, S2, None, ["B04", "B03", "B02", "B08"], _thirteen_to_four_reordered),
    "3->1": (3, None, [1], None, _three_to_one),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_frozen_encoder_ends_as_the_file_mapped_to_the_bands(
    case: str, demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    n_weight_bands, weight_names, image_bands, band_names, first_conv = CASES[case]
    weights = {k: v.contiguous() for k, v in timm_resnet18(n_weight_bands).items()}
    metadata = {"band_names": json.dumps(weight_names)} if weight_names else None
    file = tmp_path / "encoder.safetensors"
    save_file(weights, file, metadata=metadata)
    source = demo_config["data_source"]
    source.pop("test_file")
    if image_bands:
        source["image_bands"] = image_bands
    if band_names:
        source["band_names"] = band_names
    demo_config["train_setup"].update(
        model_name="smp:unet",
        model_params={**MODEL_PARAMS, "encoder_weights": str(file)},
        epochs=1,
        freeze_encoder_epochs=2,  # more than epochs: frozen for the whole run
    )
    demo_config["output_setup"].update(
        use_tensorboard=False, get_prediction=False, name_exp_log="e", version_name="v"
    )
    code, err = run_cli(
        ["train", "-c", str(write_config(tmp_path / "c.json", demo_config))], capsys
    )
    assert code == 0, err

    run = Path(demo_config["output_setup"]["output_folder"]) / "e" / "v"
    (checkpoint,) = (run / "checkpoints").glob("*-last.ckpt")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    prefix = "model.encoder.model."  # smp keeps timm's network as the encoder's ``model``
    encoder = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    # timm's features cut after the second stage: the stem and two stages, no classifier
    stages = ("conv1.", "bn1.", "layer1.", "layer2.")
    assert set(encoder) == {key for key in weights if key.startswith(stages)}
    assert torch.equal(encoder["conv1.weight"], first_conv(weights["conv1.weight"]))
    for key, value in encoder.items():
        if key != "conv1.weight":
            assert torch.equal(value, weights[key]), key
