"""Early stopping ends a run, for good; a patience changed on continue is applied, the
counters of the run are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import EarlyStopping

from landseg.callbacks.early_stopping import ConfiguredEarlyStopping
from landseg.cli.main import main
from tests.helpers import write_config


def test_configured_patience_and_min_delta_survive_loading_a_checkpoint() -> None:
    before = EarlyStopping(monitor="val_loss", mode="min", patience=3, min_delta=0.1)
    before.wait_count, before.stopped_epoch = 2, 0
    state = before.state_dict()
    assert state["patience"] == 3  # what Lightning would restore

    after = ConfiguredEarlyStopping(monitor="val_loss", mode="min", patience=9, min_delta=0.2)
    after.load_state_dict(state)
    assert (after.patience, after.min_delta) == (9, -0.2)  # Lightning signs min_delta by mode
    assert after.wait_count == 2  # the run's own count continues

    plain = EarlyStopping(monitor="val_loss", mode="min", patience=9, min_delta=0.2)
    plain.load_state_dict(state)
    assert plain.patience == 3  # the behaviour this class exists to change


@pytest.mark.slow
def test_early_stopping_ends_a_run_and_a_continued_run_keeps_it_ended(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """val_loss must fall by 100 to count: epoch 0 improves on nothing, epoch 1 cannot, and
    with patience 1 the run ends there, 2 of its 6 epochs done, marked as ended by early
    stopping; continuing it with more epochs trains nothing."""
    demo_config["train_setup"].update(
        epochs=6,
        batch_size=8,
        early_stopping={"monitor": "val_loss", "patience": 1, "min_delta": 100},
    )
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v1", use_tensorboard=False, get_prediction=False
    )
    demo_config["data_source"].pop("test_file")
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 0
    run = tmp_path / "runs" / "exp" / "v1"
    assert list(json.loads((run / "history.json").read_text())) == ["0", "1"]
    state = json.loads((run / "run.json").read_text())
    assert (state["status"], state["epochs_done"], state["early_stopped"]) == ("finished", 2, True)

    demo_config["train_setup"].update(epochs=8, continue_training=True)
    capsys.readouterr()
    assert main(["train", "-c", str(write_config(tmp_path / "more.json", demo_config))]) == 0
    assert "ended by early stopping after 2 epochs; nothing left to do" in capsys.readouterr().out
    assert list(json.loads((run / "history.json").read_text())) == ["0", "1"]
