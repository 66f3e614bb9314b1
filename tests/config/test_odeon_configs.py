"""004's minimal and full configs, pointed at ../shared/data/dubai-aerial, validate as-is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from landseg.cli import main
from tests.conftest import REPO

EXAMPLES = REPO / "examples"


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["odeon_minimal.json", "odeon_full.json"])
def test_odeon_config_validates(name: str, shared_data: Path, capsys) -> None:
    assert main(["validate", "-c", str(EXAMPLES / name)]) == 0, capsys.readouterr().err


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
    assert main(["validate", "-c", str(path)]) == 2
    assert "data_source.mask_bands" in capsys.readouterr().err
