"""W&B: offline under the run folder, or a config error naming the fix when not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from landseg.core.errors import ConfigError
from landseg.loggers.wandb import make_wandb_logger
from tests.helpers import item_key, read_wandb_records

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


def _clean_wandb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the W&B variables for the test; restored after it (make_wandb_logger sets them)."""
    for name in ("WANDB_MODE", "WANDB_SILENT", "WANDB_DIR"):
        monkeypatch.setenv(name, "")  # recorded, so that the teardown restores the original
        monkeypatch.delenv(name)


@pytest.mark.skipif(not WANDB_INSTALLED, reason="wandb is not installed")
def test_offline_logger_in_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_wandb_env(monkeypatch)
    logger = make_wandb_logger(tmp_path, "exp/1", "v 0")
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_DIR"] == str(tmp_path)
    assert logger.save_dir == str(tmp_path)
    assert logger.version == "exp-1-v-0"


@pytest.mark.skipif(not WANDB_INSTALLED, reason="wandb is not installed")
def test_offline_run_file_holds_the_logged_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_wandb_env(monkeypatch)
    logger = make_wandb_logger(tmp_path, "exp/1", "v 0")
    logger.log_hyperparams({"train_setup": {"lr": 0.001, "model_name": "lightunet"}})
    logger.log_metrics({"train_loss": 0.5, "val_miou": 0.25}, step=3)
    logger.log_metrics({"train_loss": 0.125}, step=7)
    logger.experiment.finish()  # flushes and closes the run file

    runs = list((tmp_path / "wandb").glob("offline-run-*-exp-1-v-0"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    files = list(runs[0].glob("*.wandb"))
    assert [f.name for f in files] == ["run-exp-1-v-0.wandb"]
    # wandb's service process writes the file: finish() has been seen to return before all of
    # it is on disk (once in a whole-suite run), so read until its last record, the exit, is there
    deadline = time.monotonic() + 15
    records = read_wandb_records(files[0])
    while not any(r.HasField("exit") for r in records) and time.monotonic() < deadline:
        time.sleep(0.1)
        records = read_wandb_records(files[0])
    kinds = [record.WhichOneof("record_type") for record in records]

    (run,) = [record.run for record in records if record.HasField("run")]
    assert (run.run_id, run.project, run.display_name) == ("exp-1-v-0", "exp-1", "v 0")
    config = {
        item_key(item): json.loads(item.value_json)
        for record in records
        if record.HasField("config")
        for item in record.config.update
    }
    assert config["train_setup"] == {"lr": 0.001, "model_name": "lightunet"}
    rows = [
        {item_key(item): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.HasField("history")
    ]
    logged = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    assert logged == [
        {"train_loss": 0.5, "val_miou": 0.25, "trainer/global_step": 3},
        {"train_loss": 0.125, "trainer/global_step": 7},
    ]
    assert [row["_step"] for row in rows] == [0, 1]
    assert kinds[-1] == "exit"
    assert records[-1].exit.exit_code == 0
