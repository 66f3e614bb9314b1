"""Which settings may change when a run is continued, and which a run's results depend on.

A continued run (``continue_training``, ``--resume``) is the same run: its checkpoints,
history and metrics only make sense with the settings it was trained with. A few settings
may change, and are applied:

- ``train_setup.epochs`` (train longer, or stop sooner);
- ``train_setup.early_stopping.patience`` and ``min_delta`` (re-applied after the
  checkpoint is loaded);
- ``train_setup.val_check_interval`` (from the step the run continues at);
- ``device_setup.*`` except ``precision``, as long as the number of training processes stays
  the same (a different count would break the loader's position inside an epoch);
- display and logging: ``output_setup.progress``, ``figures_every_n_epochs``,
  ``log_learning_rate``, ``loggers``, ``use_tensorboard``, ``use_wandb``, ``class_colors``;
- the decoded-tile cache: ``data_source.cache``, ``cache_dir``, ``cache_limit_gb`` (it changes
  how fast tiles are read, never what is read).

``output_setup.output_folder`` may differ too: it says where the run lies (an output folder
moved or copied elsewhere is continued there), not how it trains. Any other difference is
refused: ``train_setup.freeze_encoder_epochs`` and ``encoder_lr_factor`` among them (which
epochs the encoder trained in, and at which rate, are what the run is; the factor also shapes
the optimiser state the run continues with). A cross-validation task's hash (what its results
depend on)
leaves out the same keys, plus ``train_setup.continue_training``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from landseg.config.schema import DeviceSetup

#: Dotted keys that may differ between a run and its continuation; a key ending in ``.*``
#: covers its whole section.
CHANGEABLE = (
    "train_setup.epochs",
    "train_setup.early_stopping.patience",
    "train_setup.early_stopping.min_delta",
    "train_setup.val_check_interval",
    "train_setup.continue_training",
    "train_setup.compile",
    "device_setup.*",
    "output_setup.progress",
    "output_setup.figures_every_n_epochs",
    "output_setup.log_learning_rate",
    "output_setup.loggers",
    "output_setup.use_tensorboard",
    "output_setup.use_wandb",
    "output_setup.class_colors",
    "data_source.cache",
    "data_source.cache_dir",
    "data_source.cache_limit_gb",
)
#: Changeable keys that a continued run must nevertheless keep.
KEPT = ("device_setup.precision",)
#: Keys that may differ when a run is continued but are no settings of it: where its folder
#: lies (an output folder moved, or copied to another disk, is continued there). Unlike
#: :data:`CHANGEABLE` they stay in a cv task's hash (a job folder names its tasks' folders).
WHERE_THE_RUN_LIES = ("output_setup.output_folder",)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs between two configs (as plain JSON types)."""
    before, after = flatten(old), flatten(new)
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def changeable(key: str) -> bool:
    if key in KEPT:
        return False
    return any(
        key == pattern or (pattern.endswith(".*") and key.startswith(pattern[:-1]))
        for pattern in CHANGEABLE
    )


def result_relevant(data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a run's results depend on: the config less the changeable keys (flat)."""
    return {key: value for key, value in flatten(data).items() if not changeable(key)}


def continuation_problems(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    """(the changes that apply, one line per change that is refused) between a run's config and
    the config it is continued with."""
    changes = {
        key: values
        for key, values in differences(old, new).items()
        if key != "train_setup.continue_training"
    }
    allowed = {
        key: values
        for key, values in changes.items()
        if changeable(key) or key in WHERE_THE_RUN_LIES
    }
    problems = [
        f"{key}: {old_value!r} in the run, {new_value!r} now; a continued run keeps it (start "
        "a new run, or fine-tune from its weights with train_setup.init_weights)"
        for key, (old_value, new_value) in changes.items()
        if key not in allowed
    ]
    old_device, new_device = old.get("device_setup"), new.get("device_setup")
    if isinstance(old_device, Mapping) and isinstance(new_device, Mapping):
        before = DeviceSetup.model_validate(old_device).process_count()
        after = DeviceSetup.model_validate(new_device).process_count()
        if before != after:
            problems.append(
                f"device_setup: {before or 'auto'} training processes in the run, "
                f"{after or 'auto'} now; a continued run keeps the count (the data loader's "
                "position inside an epoch depends on it)"
            )
    return allowed, problems
