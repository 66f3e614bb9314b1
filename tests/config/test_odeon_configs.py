"""ODEON's minimal and full example configs, pointed at ../shared/data/dubai-aerial, validate
as-is; the keys and names users bring from other tools get the landseg key they meant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from landseg.cli.main import main
from landseg.config.load import KEY_SYNONYMS, validate_config
from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError
from landseg.core.registry import closest, unknown_name_message
from landseg.models.registry import MODELS
from tests.helpers import REPO

#: ODEON's own example configs, as its documentation writes them (Dubai tiles, a GPU).
EXAMPLES = REPO / "tests" / "config" / "odeon_examples"


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["odeon_minimal.json", "odeon_full.json"])
def test_odeon_config_validates(
    name: str, shared_data: Path, capsys: pytest.CaptureFixture
) -> None:
    """ODEON's examples ask for a GPU: they validate as written for the machine that has it."""
    path = str(EXAMPLES / name)
    assert main(["validate", "--no-device-check", "-c", path]) == 0, capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():  # here, validate says what train would hit
        capsys.readouterr()
        assert main(["validate", "-c", path]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: device_setup.accelerator: 'gpu', but this machine has no CUDA GPU (torch "
            f"{torch.__version__} sees none): use cpu; or validate with --no-device-check "
            "where the job will run on other machines"
        ]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["odeon_minimal.json", "odeon_full.json"])
def test_odeon_config_with_15_mask_bands_names_mask_bands(
    name: str, shared_data: Path, tmp_path: Path, capsys
) -> None:
    config = json.loads((EXAMPLES / name).read_text())
    config["data_source"]["mask_bands"] = list(range(1, 16))
    config["data_source"].pop("class_labels", None)
    config["train_setup"].pop("class_imbalance", None)
    for key in ("train_file", "val_file", "test_file"):
        config["data_source"][key] = str((EXAMPLES / config["data_source"][key]).resolve())
    path = tmp_path / name
    path.write_text(json.dumps(config))
    assert main(["validate", "--no-device-check", "-c", str(path)]) == 2
    assert "data_source.mask_bands" in capsys.readouterr().err


def problems(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    return error.value.problems


@pytest.mark.parametrize(
    ("section", "key", "meant"),
    [
        ("train_setup", "learning_rate", "lr"),
        ("train_setup", "LearningRate", "lr"),
        ("train_setup", "max_epochs", "epochs"),
        ("train_setup", "num_epochs", "epochs"),
        ("train_setup", "batchsize", "batch_size"),
        ("train_setup", "optimizer", "optimizer_config"),
        ("train_setup", "scheduler", "scheduler_config"),
        ("train_setup", "weight_decay", "optimizer_config.weight_decay"),
        ("train_setup", "seed", "random_seed"),
        ("train_setup", "gpus", "device_setup.device"),
        ("device_setup", "devices", "device"),
        ("output_setup", "output_dir", "output_folder"),
    ],
)
def test_another_tools_key_suggests_landsegs(
    demo_config: dict, section: str, key: str, meant: str
) -> None:
    demo_config[section][key] = 1
    (line,) = problems(demo_config)
    assert line.startswith(f"{section}.{key}: unknown key (did you mean '{meant}'?); valid keys:")


def test_num_classes_says_where_classes_come_from(demo_config: dict) -> None:
    demo_config["data_source"]["num_classes"] = 4
    (line,) = problems(demo_config)
    assert line.startswith(
        "data_source.num_classes: unknown key (no such key: the classes come from "
        "data_source.class_labels or data_source.mask_bands); valid keys:"
    )


def test_a_misspelt_key_still_gets_the_closest(demo_config: dict) -> None:
    demo_config["train_setup"]["batch_szie"] = 4
    assert problems(demo_config)[0].startswith(
        "train_setup.batch_szie: unknown key (did you mean 'batch_size'?)"
    )


def test_every_synonym_names_a_real_key() -> None:
    for path in set(KEY_SYNONYMS.values()):
        model: object = LandsegConfig
        parts = path.split(".")
        for i, part in enumerate(parts):
            assert isinstance(model, type) and issubclass(model, BaseModel), path
            field = model.model_fields.get(part)
            if field is None:  # a parameter of an optimiser or scheduler (extra keys)
                assert model.model_config.get("extra") == "allow" and i == len(parts) - 1, path
                break
            args = getattr(field.annotation, "__args__", None) or (field.annotation,)
            model = next((a for a in args if isinstance(a, type)), field.annotation)


def test_equally_close_names_prefer_the_longest_prefix_then_the_nearest_number() -> None:
    names = MODELS.names()
    assert {"resnet34", "resnet50"} <= set(names)
    assert closest("resnet35", names) == "resnet34"  # difflib alone: resnet50 (a tie)
    assert closest("ResNet35", names) == "resnet34"
    assert closest("resnet40", ["resnet50", "resnet34"]) == "resnet34"  # 6 away, not 10
    assert closest("resnet45", ["resnet34", "resnet50"]) == "resnet50"
    assert closest("lightunett", names) == "lightunet"
    assert closest("xyz", names) is None
    assert "(did you mean 'resnet34'?)" in unknown_name_message("model", "resnet35", names)
