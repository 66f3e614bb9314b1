"""A patience changed on continue is applied; the counters of the run are kept."""

from __future__ import annotations

from lightning.pytorch.callbacks import EarlyStopping

from landseg.callbacks.early_stopping import ConfiguredEarlyStopping


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
