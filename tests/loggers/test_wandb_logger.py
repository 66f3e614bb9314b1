"""W&B: offline under the run folder, or a config error naming the fix when not installed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from landseg.errors import ConfigError
from landseg.loggers.wandb import make_wandb_logger

WANDB_INSTALLED = importlib.util.find_spec("wandb") is not None


def test_missing_wandb_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    with pytest.raises(ConfigError) as error:
        make_wandb_logger(tmp_path, "exp", "v0")
    assert error.value.problems == [
        "output_setup.use_wandb: the wandb package is not installed; "
        "install landseg[wandb] or set use_wandb false"
    ]
    assert error.value.exit_code == 2


@pytest.mark.skipif(not WANDB_INSTALLED, reason="wandb is not installed")
def test_offline_logger_in_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_MODE", "WANDB_SILENT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    logger = make_wandb_logger(tmp_path, "exp/1", "v 0")
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_DIR"] == str(tmp_path)
    assert logger.save_dir == str(tmp_path)
    assert logger.version == "exp-1-v-0"
