"""Pretrained encoder weights from local files: every layout loads into the encoder with its
exact values, the first convolution takes any number of bands (by band names, else smp's
rule), weights names are found in the local caches only, and a wrong file is one line.

The weights files are written here with random weights (no download): timm's layout (the one
torchgeo's ResNet weights use), smp's encoder with and without ``encoder.``, a Lightning
checkpoint, a ``backbone.`` prefix, safetensors with band names in its metadata.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from landseg.config.schema import DataSource, LandsegConfig, TrainSetup
from landseg.core.errors import ConfigError
from landseg.models.pretrained import hub_files, map_first_conv
from landseg.models.registry import build_model
from landseg.planning.pretrained import (
    encoder_weights_problems,
    load_encoder_weights,
    weights_source,
)
from tests.helpers import RGB, S2, SMALL_RESNET18, bad_files, no_network, timm_resnet18


def config(
    weights: Any, band_names: list[str] | None = None, model: str = "smp:unet", **params: Any
) -> LandsegConfig:
    """A config of ``model`` with these encoder weights (checked as train would)."""
    model_params = {"encoder_weights": str(weights) if isinstance(weights, Path) else weights}
    if model.startswith("smp:"):
        model_params.update(SMALL_RESNET18)
    model_params.update(params)
    return LandsegConfig.model_construct(
        data_source=DataSource.model_construct(band_names=band_names, image_bands=None),
        train_setup=TrainSetup(model_name=model, model_params=model_params),
    )


@functools.cache
def _network(name: str, n_bands: int, params: str) -> nn.Module:
    return build_model(name, n_bands, 2, json.loads(params))


def loaded(cfg: LandsegConfig, n_bands: int) -> tuple[nn.Module, dict[str, Any] | None]:
    """The config's network with its encoder weights loaded, and the load's record.

    Each network is built once for the module (building dominates these tests' time); its
    encoder is zeroed before every load, so that a tensor the load misses shows."""
    train = cfg.train_setup
    model = _network(train.model_name, n_bands, json.dumps(train.model_params, sort_keys=True))
    with torch.no_grad():
        for tensor in model.get_submodule("encoder").state_dict().values():
            tensor.zero_()
    return model, load_encoder_weights(model, cfg, n_bands)


def assert_encoder_is(model: nn.Module, given: dict[str, torch.Tensor], skip: str) -> None:
    """Every encoder tensor but the first convolution ``skip`` equals the file's."""
    own = model.get_submodule("encoder").state_dict()
    compared = [key for key in own if key != skip and not key.endswith("num_batches_tracked")]
    assert compared and all(torch.equal(own[key], given[key]) for key in compared)


# ---------------------------------------------------------------------------- layouts


def _layouts(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, Any]]:
    """(suffix, the object torch.save writes) per layout, all holding ``sd`` (timm's keys,
    which are the smp ResNet encoder's)."""
    smp_encoder = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    return {
        "timm": (".pth", sd),
        "timm checkpoint": (".pth.tar", {"epoch": 3, "state_dict": sd, "arch": "resnet18"}),
        "smp encoder": (".pt", smp_encoder),
        "smp model": (".pt", {f"encoder.{k}": v for k, v in smp_encoder.items()}),
        "lightning": (".ckpt", {"state_dict": {f"model.encoder.{k}": v for k, v in sd.items()}}),
        "backbone": (".bin", {f"module.backbone.{k}": v for k, v in sd.items()}),
    }


@pytest.mark.parametrize("layout", list(_layouts({})))
def test_every_layout_loads_the_files_tensors(layout: str, tmp_path: Path) -> None:
    sd = timm_resnet18()
    suffix, content = _layouts(sd)[layout]
    path = tmp_path / f"weights{suffix}"
    torch.save(content, path)
    model, record = loaded(config(path), 3)
    assert_encoder_is(model, sd, skip="")  # 3 bands: the first convolution as in the file
    assert record is not None and record["loaded"] == record["total"] == 100
    assert record["file"] == path.name and record["missing"] == []


def test_odeon_resnet_unet_takes_a_timm_file(tmp_path: Path) -> None:
    """ODEON's resnet18 (a whole 5-stage encoder): every tensor but timm's classifier."""
    sd = timm_resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    model, record = loaded(config(path, model="resnet18"), 3)
    assert_encoder_is(model, sd, skip="")
    assert record is not None and record["loaded"] == record["total"] == 100
    assert record["unexpected_examples"] == ["fc.weight", "fc.bias"]


def test_three_bands_to_four_by_names(tmp_path: Path) -> None:
    """RGB weights for blue, green, red, nir: the RGB kernels reordered, nir the mean, all
    times 3/4."""
    sd = timm_resnet18()
    path = tmp_path / "rgb.pth"
    torch.save(sd, path)
    image = ["blue", "green", "red", "nir"]
    model, record = loaded(config(path, image, encoder_bands=RGB), 4)
    assert_encoder_is(model, sd, skip="conv1.weight")
    w, got = sd["conv1.weight"], model.encoder.conv1.weight.detach()
    expected = torch.stack([w[:, 2], w[:, 1], w[:, 0], w.mean(1)], dim=1) * 0.75
    assert torch.allclose(got, expected, atol=1e-7)
    assert record is not None and record["bands"]["mapping"] == {
        "blue": "blue",
        "green": "green",
        "red": "red",
        "nir": "mean",
    }
    assert record["bands"]["factor"] == 0.75


def test_sentinel2_weights_reordered_for_four_bands(tmp_path: Path) -> None:
    """torchgeo-style 13-band weights (a timm ResNet-18 with in_chans=13) for red, green,
    blue, nir: each takes its Sentinel-2 band's kernel, times 13/4."""
    sd = timm_resnet18(in_chans=13)
    path = tmp_path / "s2.pth"
    torch.save(sd, path)
    model, record = loaded(config(path, ["red", "green", "blue", "nir"], encoder_bands=S2), 4)
    # the image's names are not Sentinel-2's: every band takes the mean kernel
    w = sd["conv1.weight"]
    assert torch.allclose(
        model.encoder.conv1.weight, w.mean(1, keepdim=True).expand(-1, 4, -1, -1) * 13 / 4
    )
    model, record = loaded(config(path, ["B04", "B03", "B02", "B08"], encoder_bands=S2), 4)
    assert_encoder_is(model, sd, skip="conv1.weight")
    expected = torch.stack([w[:, 3], w[:, 2], w[:, 1], w[:, 7]], dim=1) * 13 / 4
    assert torch.allclose(model.encoder.conv1.weight, expected, atol=1e-6)
    assert record is not None and record["bands"]["weights_bands"] == 13


def test_one_band_takes_the_sum_of_the_kernels(tmp_path: Path) -> None:
    sd = timm_resnet18()
    path = tmp_path / "rgb.pth"
    torch.save(sd, path)
    model, _ = loaded(config(path), 1)
    assert_encoder_is(model, sd, skip="conv1.weight")
    assert torch.allclose(
        model.encoder.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True), atol=1e-6
    )


def test_without_names_smp_rule(tmp_path: Path) -> None:
    """No band names: band i takes pretrained band i mod 3, times 3/4 (smp's
    patch_first_conv); the same kernels smp itself makes of these weights."""
    sd = timm_resnet18()
    path = tmp_path / "rgb.pth"
    torch.save(sd, path)
    model, record = loaded(config(path), 4)
    w = sd["conv1.weight"]
    expected = torch.stack([w[:, 0], w[:, 1], w[:, 2], w[:, 0]], dim=1) * 0.75
    assert torch.allclose(model.encoder.conv1.weight, expected, atol=1e-7)
    assert record is not None and record["bands"]["rule"] == "smp"
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    conv = nn.Sequential(nn.Conv2d(3, 64, 7))
    conv[0].weight.data.copy_(w)
    patch_first_conv(conv, 4, pretrained=True)
    assert torch.allclose(model.encoder.conv1.weight, conv[0].weight, atol=1e-7)


def test_safetensors_band_names_metadata(tmp_path: Path) -> None:
    """The weights' band names come from a safetensors file's metadata (as landseg's encoder
    export writes them) when encoder_bands is not set."""
    sd = {k: v.contiguous() for k, v in timm_resnet18().items()}
    path = tmp_path / "enc.safetensors"
    save_file(sd, path, metadata={"band_names": json.dumps(RGB), "encoder_name": "resnet18"})
    model, record = loaded(config(path, ["nir", "red"]), 2)
    w = sd["conv1.weight"]
    assert torch.allclose(model.encoder.conv1.weight, torch.stack([w.mean(1), w[:, 0]], 1) * 1.5)
    assert record is not None and record["bands"]["mapping"] == {"nir": "mean", "red": "red"}


def test_timm_encoder_takes_a_timm_file(tmp_path: Path) -> None:
    """smp's tu- encoders keep timm's model under ``model.``: a timm file's conv1.weight is
    their model.conv1.weight."""
    sd = timm_resnet18()
    path = tmp_path / "timm.pth"
    torch.save(sd, path)
    model, record = loaded(config(path, encoder_name="tu-resnet18"), 3)
    own = model.encoder.state_dict()
    assert all(torch.equal(v, sd[k.removeprefix("model.")]) for k, v in own.items())
    assert record is not None and record["loaded"] == record["total"] == 50  # 3 stages


def test_encoder_weights_prefix(tmp_path: Path) -> None:
    sd = timm_resnet18()
    path = tmp_path / "net.pth"
    torch.save({f"net.trunk.{k}": v for k, v in sd.items()}, path)
    with pytest.raises(ConfigError, match=r"only 0 of the encoder's 100 tensors"):
        loaded(config(path), 3)
    model, _ = loaded(config(path, encoder_weights_prefix="net.trunk."), 3)
    assert_encoder_is(model, sd, skip="")


def test_map_first_conv_names_must_fit_the_weights() -> None:
    with pytest.raises(ValueError, match="2 weights band names"):
        map_first_conv(torch.zeros(8, 3, 3, 3), 4, ["a", "b", "c", "d"], ["a", "b"])


# ---------------------------------------------------------------------------- refused files


def test_wrong_files_are_one_line_each(tmp_path: Path) -> None:
    for kind, (path, expected) in bad_files(tmp_path).items():
        problems = encoder_weights_problems(config(path), 4)
        assert len(problems) == 1, (kind, problems)
        line = problems[0]
        assert line.startswith("train_setup.model_params.encoder_weights: ") and "\n" not in line
        assert str(path) in line and expected in line, (kind, line)
    assert not (tmp_path / "ran").exists()  # the pickle's code never ran


# ---------------------------------------------------------------------------- weights names


def test_weights_name_from_the_hugging_face_cache(tmp_path: Path, monkeypatch) -> None:
    """imagenet for resnet18: smp's smp-hub/resnet18.imagenet model.safetensors at its pinned
    revision, in a Hugging Face cache laid out as huggingface_hub writes it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    attempts = no_network(monkeypatch)
    (hub,) = hub_files("resnet18", "imagenet")
    assert (hub.repo_id, hub.filename) == ("smp-hub/resnet18.imagenet", "model.safetensors")
    cfg = config("imagenet")
    with pytest.raises(ConfigError, match=r"smp-hub/resnet18\.imagenet model\.safetensors") as err:
        weights_source(cfg.train_setup)
    assert len(err.value.problems) == 1 and str(tmp_path) in err.value.problems[0]
    snapshot = tmp_path / "models--smp-hub--resnet18.imagenet" / "snapshots" / str(hub.revision)
    snapshot.mkdir(parents=True)
    sd = {k: v for k, v in timm_resnet18().items() if not k.startswith("fc.")}
    save_file(sd, snapshot / "model.safetensors")
    model, record = loaded(cfg, 3)
    assert_encoder_is(model, sd, skip="")
    assert record is not None and record["source"] == "imagenet (local cache)"
    assert attempts == []


def test_timm_weights_from_the_torch_hub_cache(tmp_path: Path, monkeypatch) -> None:
    """tu-resnet18 with true: timm's file, here its URL's in torch hub's checkpoints."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    attempts = no_network(monkeypatch)
    cfg = config(True, encoder_name="tu-resnet18")
    assert "resnet18" in encoder_weights_problems(cfg, 3)[0]
    url_file = next(hub for hub in hub_files("tu-resnet18", True) if hub.repo_id is None)
    (tmp_path / "torch" / "checkpoints").mkdir(parents=True)
    sd = timm_resnet18()
    torch.save(sd, tmp_path / "torch" / "checkpoints" / url_file.filename)
    assert encoder_weights_problems(cfg, 3) == []
    model, _ = loaded(cfg, 3)
    own = model.encoder.state_dict()
    assert all(torch.equal(v, sd[k.removeprefix("model.")]) for k, v in own.items())
    assert attempts == []


def test_flattened_timm_feature_names(tmp_path: Path) -> None:
    """timm's feature extractor names ConvNeXt's stages.0 stages_0: a timm file still fits."""
    torch.manual_seed(0)
    sd = timm.create_model("convnext_atto").state_dict()
    path = tmp_path / "convnext.pth"
    torch.save(sd, path)
    model, record = loaded(config(path, encoder_name="tu-convnext_atto"), 3)
    own = model.encoder.state_dict()
    key = "model.stages_0.blocks.0.conv_dw.weight"
    assert torch.equal(own[key], sd["stages.0.blocks.0.conv_dw.weight"])
    assert record is not None and record["loaded"] == record["total"] == len(own)


def test_transformer_encoder_dpt_with_a_vit(tmp_path: Path) -> None:
    """DPT on a timm ViT: the patch embedding is the first convolution (3 -> 4 bands, smp's
    rule); the class token, position embedding and blocks are the file's."""
    torch.manual_seed(0)
    sd = timm.create_model("test_vit").state_dict()
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    cfg = config(path, model="smp:dpt", encoder_name="tu-test_vit")
    cfg.train_setup.model_params = {"encoder_name": "tu-test_vit", "encoder_weights": str(path)}
    model, record = loaded(cfg, 4)
    own = model.encoder.state_dict()
    first = "model.patch_embed.proj.weight"
    assert record is not None and record["first_conv"] == first
    assert all(torch.equal(v, sd[k.removeprefix("model.")]) for k, v in own.items() if k != first)
    w = sd["patch_embed.proj.weight"]
    expected = torch.stack([w[:, 0], w[:, 1], w[:, 2], w[:, 0]], dim=1) * 0.75
    assert torch.allclose(own[first], expected, atol=1e-7)


def test_deeplab_takes_a_torchvision_mobilenet_file(tmp_path: Path) -> None:
    """ODEON's deeplab: smp's MobileNetV2 encoder is torchvision's; its classifier is left."""
    import torchvision

    torch.manual_seed(0)
    sd = torchvision.models.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(sd, path)
    model, record = loaded(config(path, model="deeplab"), 3)
    assert_encoder_is(model, sd, skip="")
    assert record is not None and record["loaded"] == record["total"]
    assert record["unexpected_examples"] == ["classifier.1.weight", "classifier.1.bias"]
