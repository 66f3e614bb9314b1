"""The config reference in docs/ is generated from the config models and must stay current."""

from __future__ import annotations

import json

from landseg.cli.main import main
from landseg.config.docs import render
from tests.helpers import REPO


def test_configuration_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: run `make docs`"


def test_reference_documents_every_odeon_key() -> None:
    text = render()
    odeon_keys = [
        "train_file", "val_file", "test_file", "percentage_val", "image_bands", "mask_bands",
        "class_labels", "resolution", "normalization_weights", "data_augmentation",
        "model_name", "epochs", "batch_size", "lr", "loss", "class_imbalance",
        "optimizer_config", "scheduler_config", "early_stopping", "continue_training",
        "export_checkpoint", "val_check_interval", "deterministic", "random_seed", "testing",
        "output_folder", "model_filename", "model_out_ext", "name_exp_log", "version_name",
        "get_prediction", "prediction_output_type", "use_tensorboard", "use_wandb",
        "log_learning_rate", "save_history", "save_top_k", "progress",
        "accelerator", "device", "num_nodes", "num_workers", "num_processes", "strategy",
    ]  # fmt: skip
    missing = [key for key in odeon_keys if f"| `{key}` |" not in text]
    assert not missing


def test_schema_command_prints_json_schema(capsys) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["required"]) == {"data_source", "train_setup", "output_setup"}
