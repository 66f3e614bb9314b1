"""Models: 004's names build for any band count, keep the input size, and bad params are caught."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from torch import nn

from landseg.core.errors import ConfigError
from landseg.models.registry import (
    MODELS,
    build_model,
    model_problems,
    model_size_multiple,
    register_smp_models,
)
from tests.helpers import no_network, write_config

BANDS, CLASSES = 4, 5


def logits_shape(model: nn.Module, size: int) -> tuple[int, ...]:
    model.eval()
    with torch.no_grad():
        return tuple(model(torch.rand(1, BANDS, size, size)).shape)


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    """The original U-Net is big (31 M parameters): built once for the whole module."""
    return build_model("unet", BANDS, CLASSES)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("lightunet", {}),
        ("lightunet", {"decoder_mode": "transposed"}),
        ("resnet18", {}),
        ("resnet18", {"decoder_mode": "transposed"}),
        ("resnet34", {}),
        ("deeplab", {}),
        ("deeplab", {"output_stride": 16}),
        ("smp:FPN", {"encoder_name": "resnet18"}),
        ("smp:Unet", {"encoder_name": "resnet18", "decoder_interpolation": "bilinear"}),
    ],
)
def test_model_keeps_input_size(name: str, params: dict) -> None:
    model = build_model(name, BANDS, CLASSES, params)
    assert logits_shape(model, 64) == (1, CLASSES, 64, 64)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_big_resnet_unets_on_tiny_input(name: str) -> None:
    assert logits_shape(build_model(name, BANDS, CLASSES), 32) == (1, CLASSES, 32, 32)


def test_resnet150_is_read_as_resnet152(
    demo_config: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """004's slip: the network is ResNet-152, and validate (as train) says so."""
    from landseg.cli.main import main

    demo_config["train_setup"]["model_name"] = "resnet150"
    with caplog.at_level("WARNING", logger="landseg.config"):
        assert main(["validate", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 0
    assert caplog.messages == [
        "train_setup.model_name: 'resnet150' is read as 'resnet152' (ResNet has no 150-layer "
        "network; ODEON's documentation lists it by mistake)"
    ]
    model = build_model("resnet150", BANDS, CLASSES, {"decoder_mode": "transposed"})
    assert len(model.encoder.layer3) == 36  # ResNet-152's third stage
    assert logits_shape(model, 32) == (1, CLASSES, 32, 32)


def test_unet_matches_004_printout(unet: nn.Module) -> None:
    stages = ["inc", "down1", "down2", "down3", "down4", "up1", "up2", "up3", "up4"]
    widths = [64, 128, 256, 512, 1024, 512, 256, 128, 64]
    for stage, width in zip(stages, widths, strict=True):
        convs = [m for m in getattr(unet, stage).modules() if isinstance(m, nn.Conv2d)]
        assert convs[-1].out_channels == width, stage
    assert unet.inc.double_conv.double_conv[0].in_channels == BANDS
    assert unet.outc.conv.out_channels == CLASSES
    assert any(isinstance(m, nn.BatchNorm2d) for m in unet.modules())
    assert logits_shape(unet, 32) == (1, CLASSES, 32, 32)


def test_lightunet_widths_and_no_batch_norm() -> None:
    light = build_model("lightunet", BANDS, CLASSES)
    assert light.inc.double_conv.double_conv[0].out_channels == 8
    assert light.down4.maxpool_conv[1].double_conv[2].out_channels == 128
    assert not any(isinstance(m, nn.BatchNorm2d) for m in light.modules())
    with_bn = build_model("lightunet", BANDS, CLASSES, {"batch_norm": True})
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())


def test_size_multiples() -> None:
    assert model_size_multiple("unet") == 16
    assert model_size_multiple("resnet34") == 32
    assert model_size_multiple("deeplab") == 8
    assert model_size_multiple("deeplab", {"output_stride": 16}) == 16
    assert model_size_multiple("smp:pspnet") == 8  # encoder_depth 3
    assert model_size_multiple("smp:unet", {"encoder_depth": 4}) == 16


def test_valid_params_have_no_problems() -> None:
    assert model_problems("resnet34", {"decoder_mode": "transposed"}, (256, 256)) == []
    assert model_problems("deeplab", {"output_stride": 8}, (72, 72)) == []
    assert model_problems("SMP:Segformer", {"encoder_name": "mit_b0"}, (64, 64)) == []
    assert model_problems("smp:unet", {"encoder_name": "tu-resnet18"}, (64, 64)) == []


@pytest.mark.parametrize(
    ("name", "params", "patch", "expected"),
    [
        ("deeplab", {"output_stride": 32}, None, "model_params.output_stride: 32 is not allowed"),
        ("deeplab", {"output_stride": 16}, (72, 72), "multiples of 16, but the tiles are 72x72"),
        ("resnet18", {}, (48, 64), "train_setup.model_name: model 'resnet18' needs"),
        ("unet", {"decoder_mod": "bilinear"}, None, "(did you mean 'decoder_mode'?)"),
        ("unet", {"encoder_weights": "imagenet"}, None, "unknown unet parameter"),
        ("resnet35", {}, None, "train_setup.model_name: unknown model 'resnet35' (did you mean"),
        ("smp:Unett", {}, None, "unknown smp architecture 'smp:Unett' (did you mean 'smp:unet'?)"),
        ("smp:unet", {"encoder_name": "resnet33"}, None, "(did you mean 'resnet34'?)"),
        ("smp:unet", {"encoder_name": "tu-nonexistent"}, None, "timm has no model"),
        ("smp:unet", {"activation": "softmax"}, None, "model_params.activation: unknown"),
        ("resnet18", {"encoder_weights": "imagenett"}, None, "available: imagenet"),
        ("resnet18", {"encoder_weights": "imagenett"}, None, "or the path of a weights file"),
        (
            "smp:unet",
            {"encoder_name": "tu-resnet18", "encoder_weights": "imagenet"},
            None,
            "takes true, null or the path of a weights file",
        ),
        (
            "resnet18",
            {"encoder_weights": "w.pt", "encoder_bands": ["red", "Red"]},
            None,
            "encoder_bands: names must be unique",
        ),
        ("deeplab", {"encoder_bands": ["red"]}, None, "applies to encoder_weights, which is not"),
    ],
)
def test_model_problems(
    name: str, params: dict, patch: tuple[int, int] | None, expected: str
) -> None:
    problems = model_problems(name, params, patch)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert problems[0].startswith("train_setup.model_")


def test_build_rejects_bad_params() -> None:
    with pytest.raises(ConfigError, match="output_stride"):
        build_model("deeplab", BANDS, CLASSES, {"output_stride": 4})
    with pytest.raises(ConfigError, match=r"train_setup\.model_params: model 'smp:unet' cannot"):
        build_model("smp:unet", BANDS, CLASSES, {"encoder_depth": 4})  # 5 decoder_channels


def test_unavailable_pretrained_weights_fail_fast(monkeypatch, tmp_path) -> None:
    """Offline with an empty cache: one ConfigError line at once; no connection is tried and
    nothing waits to retry (counted, not timed: a loaded machine makes any time bound lie).
    The network itself is built with random weights: the weights are looked up for a new
    run (weights_source), never when a network is rebuilt from a checkpoint."""

    from landseg.config.schema import TrainSetup
    from landseg.planning.pretrained import weights_source

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    attempts = no_network(monkeypatch)  # a retry's back-off sleeps: refused too
    params = {"encoder_weights": "imagenet"}
    build_model("resnet18", BANDS, CLASSES, params)
    with pytest.raises(ConfigError, match=r"train_setup\.model_params\.encoder_weights") as err:
        weights_source(TrainSetup(model_name="resnet18", model_params=params))
    assert attempts == []
    assert len(err.value.problems) == 1 and "\n" not in err.value.problems[0]


def test_every_entry_declares_its_params() -> None:
    register_smp_models()
    for name in MODELS:
        info = MODELS.info(name)
        assert isinstance(info["params"], dict) and info["size_multiple"] >= 1, name
        assert info["params"].get("encoder_weights") is None, name
