"""Early stopping whose patience and min_delta are the config's, also in a continued run.

Lightning's ``EarlyStopping`` saves its ``patience`` in checkpoints and restores it when a run
continues, so a patience changed on continue (an allowed change, see
:mod:`landseg.config.continuation`) would be silently dropped. This one keeps the restored
counters (wait count, best score, stopped epoch) and re-applies the configured patience and
min_delta after loading.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import EarlyStopping


class ConfiguredEarlyStopping(EarlyStopping):
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience, min_delta = self.patience, self.min_delta
        super().load_state_dict(state_dict)
        self.patience, self.min_delta = patience, min_delta
