"""The normalisation pretrained weights carry, and which image band takes which.

Pure functions on lists, a few tiny weights files written here (no download), and the step of
the run's preparation that sets ``data_source.normalization_weights`` from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from landseg.config.schema import DataSource, LandsegConfig, NormalizationWeights, SplitStats
from landseg.data.summary import DataSummary
from landseg.models.pretrained_stats import (
    MEAN_OF_BANDS,
    pretrained_normalization,
    weights_stats,
)
from landseg.planning.prepare import weights_normalization_record, with_weights_normalization

MEAN3, STD3 = [0.25, 0.5, 0.75], [0.125, 0.25, 0.375]  # exact in binary: exact equalities
S2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8a", "B9", "B10", "B11", "B12"]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


# ---------------------------------------------------------------------------- the mapping


def test_three_named_bands_to_four_the_fourth_takes_the_mean_of_the_weights_bands() -> None:
    got = pretrained_normalization(
        4, ["red", "green", "blue", "nir"], ["red", "green", "blue"], MEAN3, STD3
    )
    assert got.mean == [0.25, 0.5, 0.75, 0.5]
    assert got.std == [0.125, 0.25, 0.375, 0.25]
    assert got.sources == ["red", "green", "blue", MEAN_OF_BANDS]


def test_thirteen_sentinel2_bands_to_four_reordered_by_name() -> None:
    mean = [i / 16 for i in range(1, 14)]
    std = [i / 32 for i in range(1, 14)]
    got = pretrained_normalization(4, ["B8A", "B4", "b3", "B2"], S2, mean, std)  # any case
    assert got.mean == [9 / 16, 4 / 16, 3 / 16, 2 / 16]
    assert got.std == [9 / 32, 4 / 32, 3 / 32, 2 / 32]
    assert got.sources == ["B8a", "B4", "B3", "B2"]


def test_without_band_names_band_i_takes_weights_band_i_modulo_their_count() -> None:
    got = pretrained_normalization(4, None, None, MEAN3, STD3)  # smp's first-layer rule
    assert got.mean == [0.25, 0.5, 0.75, 0.25]
    assert got.std == [0.125, 0.25, 0.375, 0.125]
    assert got.sources == ["weights band 1", "weights band 2", "weights band 3", "weights band 1"]
    two = pretrained_normalization(2, ["pan", "nir"], None, MEAN3, STD3)  # names on one side
    assert (two.mean, two.std) == ([0.25, 0.5], [0.125, 0.25])
    one = pretrained_normalization(1, None, None, MEAN3, STD3)  # smp sums the kernels: all
    assert (one.mean, one.std, one.sources) == ([0.5], [0.25], [MEAN_OF_BANDS])


@pytest.mark.parametrize(
    ("names", "mean", "std", "culprit"),
    [
        (None, [0.1, 0.2], [0.1], "2 mean and 1 std"),
        (None, [0.1], [0.0], "not > 0"),
        (["a", "b"], [0.1], [0.1], "2 weights band name(s) for 1"),
    ],
)
def test_statistics_that_do_not_fit_are_refused_naming_why(names, mean, std, culprit) -> None:
    with pytest.raises(ValueError, match=culprit.replace("(", r"\(").replace(")", r"\)")):
        pretrained_normalization(3, None, names, mean, std)


# ---------------------------------------------------------------------------- the sources


def _safetensors(path: Path, **metadata: str) -> Path:
    save_file({"conv1.weight": torch.zeros(2, 3, 1, 1)}, str(path), metadata=metadata)
    return path


def test_a_safetensors_files_metadata_gives_its_statistics_and_bands(tmp_path: Path) -> None:
    path = _safetensors(
        tmp_path / "enc.safetensors",
        mean=json.dumps(MEAN3),
        std=json.dumps(STD3),
        band_names=json.dumps(["red", "green", "blue"]),
    )
    stats = weights_stats("resnet18", str(path))
    assert stats is not None
    assert (stats.mean, stats.std, stats.band_names) == (MEAN3, STD3, ["red", "green", "blue"])
    assert stats.origin == "enc.safetensors's metadata" and not stats.pixel_units
    assert weights_stats("resnet18", str(_safetensors(tmp_path / "bare.safetensors"))) is None


def test_a_timm_encoder_named_with_its_tag_takes_timms_pretrained_config(tmp_path: Path) -> None:
    file = _safetensors(tmp_path / "model.safetensors")  # timm's hub files carry no statistics
    for weights in (str(file), True):
        stats = weights_stats("tu-resnet18.a1_in1k", weights)
        assert stats is not None and (stats.mean, stats.std) == IMAGENET
    assert weights_stats("tu-resnet18", str(file)) is None  # a file, no tag: not assumed


def test_an_smp_hub_name_reads_its_config_from_the_local_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub
    from segmentation_models_pytorch.encoders import encoders

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    assert weights_stats("resnet18", "imagenet") is None  # not cached: nothing downloaded
    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    repo = tmp_path / ("models--" + settings["repo_id"].replace("/", "--"))
    snapshot = repo / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    config = {"input_range": [0, 255], "mean": [64, 128, 192], "std": [32, 64, 96]}
    (snapshot / "config.json").write_text(json.dumps(config))
    stats = weights_stats("resnet18", "imagenet")
    assert stats is not None and stats.origin == f"{settings['repo_id']}'s config.json"
    assert stats.mean == [64 / 255, 128 / 255, 192 / 255]  # input_range 0-255: to 0-1
    assert stats.std == [32 / 255, 64 / 255, 96 / 255]


def test_torchgeo_weights_are_matched_by_the_file_name_of_their_url(tmp_path: Path) -> None:
    pytest.importorskip("torchgeo")
    path = tmp_path / "resnet18_sentinel2_all_moco-59bfdff9.pth"
    stats = weights_stats("tu-resnet18", str(path))
    assert stats is not None and stats.pixel_units
    assert stats.band_names is not None and len(stats.band_names) == 13
    assert stats.mean == [0.0] * 13 and stats.std == [10000.0] * 13


# ---------------------------------------------------------------------------- the run's config


def _config(tmp_path: Path, weights: Path, **data_source: object) -> LandsegConfig:
    return LandsegConfig.model_validate(
        {
            "data_source": {
                "train_file": str(tmp_path / "train.csv"),
                "class_labels": ["a", "b"],
                **data_source,
            },
            "train_setup": {
                "model_name": "smp:unet",
                "model_params": {"encoder_name": "resnet18", "encoder_weights": str(weights)},
            },
            "output_setup": {"output_folder": str(tmp_path / "runs")},
        }
    )


SUMMARY = DataSummary(4, 2, ("a", "b"), "classes", (32, 32), "uint8", 255.0)  # type: ignore[arg-type]


def test_a_run_without_normalization_weights_takes_the_weights_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = _safetensors(
        tmp_path / "enc.safetensors",
        mean=json.dumps(MEAN3),
        std=json.dumps(STD3),
        band_names=json.dumps(["red", "green", "blue"]),
    )
    named = "band_names" in DataSource.model_fields  # data_source.band_names, where it exists
    extra = {"band_names": ["nir", "red", "green", "blue"]} if named else {}
    config = _config(tmp_path, weights, **extra)
    with caplog.at_level("INFO", logger="landseg"):
        resolved = with_weights_normalization(config, SUMMARY)
    stats = resolved.data_source.normalization_weights
    assert stats is not None and stats.train is not None
    if named:
        assert stats.train.mean == [0.5, 0.25, 0.5, 0.75]
        assert stats.train.std == [0.25, 0.125, 0.25, 0.375]
    else:  # smp's rule: the fourth band is the first weights band
        assert stats.train.mean == [0.25, 0.5, 0.75, 0.25]
        assert stats.train.std == [0.125, 0.25, 0.375, 0.125]
    (line,) = [r.getMessage() for r in caplog.records if "normalisation" in r.getMessage()]
    assert "enc.safetensors's metadata" in line
    record = weights_normalization_record(resolved, SUMMARY)
    assert record is not None and record["used"] is True
    assert [b["mean"] for b in record["bands"]] == stats.train.mean

    own = NormalizationWeights(train=SplitStats(mean=[0.1] * 4, std=[0.2] * 4))
    data = config.data_source.model_copy(update={"normalization_weights": own})
    mine = config.model_copy(update={"data_source": data})
    assert with_weights_normalization(mine, SUMMARY) == mine  # the user's values stand
    record = weights_normalization_record(mine, SUMMARY)
    assert record is not None and record["used"] is False


def test_a_run_with_random_weights_is_left_as_it_is(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "x.safetensors")
    params = {"encoder_name": "resnet18", "encoder_weights": None}
    train = config.train_setup.model_copy(update={"model_params": params})
    config = config.model_copy(update={"train_setup": train})
    assert with_weights_normalization(config, SUMMARY) == config
    assert weights_normalization_record(config, SUMMARY) is None


class Normalize(torch.nn.Module):
    """What torchgeo's transforms hold: kornia's Normalize, its values in ``flags``."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.flags = {"mean": torch.tensor(mean), "std": torch.tensor(std)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.flags["mean"].view(1, -1, 1, 1), self.flags["std"].view(1, -1, 1, 1)
        return (x - mean) / std


def test_torchgeos_chained_normalize_steps_are_one_mean_and_std() -> None:
    """SeCo's three steps (min-max, x 255, ImageNet's): one ``(x - mean) / std`` per band
    that gives what the chain gives."""
    from landseg.models.pretrained_stats import _compose_normalize

    chain = torch.nn.Sequential(
        torch.nn.Identity(),  # a resize or crop between them is skipped
        Normalize([3.0, 2.0, 0.0], [85.0, 101.0, 129.0]),
        Normalize([0.0], [1 / 255]),
        Normalize(*IMAGENET),
    )
    composed = _compose_normalize(chain, 3)
    assert composed is not None
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in composed)
    pixels = torch.rand(2, 3, 4, 4) * 200
    assert torch.allclose((pixels - mean) / std, chain(pixels), rtol=1e-5, atol=1e-4)
    assert _compose_normalize(torch.nn.Sequential(torch.nn.Identity()), 3) is None
