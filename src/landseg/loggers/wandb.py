"""Weights & Biases, offline only: the run is written under the run folder and never uploaded.

Training jobs often run where there is no network and nobody to answer a login prompt, so the
logger is forced offline and silent; ``wandb sync <run folder>/wandb/offline-run-*`` uploads a
run later from a machine that has both.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from landseg.core.errors import ConfigError

MISSING_WANDB = (
    "output_setup.use_wandb: the wandb package is not installed; "
    "install landseg[wandb] or set use_wandb false"
)

#: Characters W&B refuses in project names and run ids.
_FORBIDDEN = re.compile(r"[/\\#?%:\s]+")


def make_wandb_logger(run_dir: str | Path, name: str, version: str) -> WandbLogger:
    """An offline ``WandbLogger`` writing ``<run_dir>/wandb``: project ``name``, run ``version``.

    The run id is derived from both, so resuming the same run folder continues the same W&B run.
    Raises :class:`~landseg.core.errors.ConfigError` when ``wandb`` is not installed.
    """
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(MISSING_WANDB)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Environment variables, not only arguments: wandb reads them in its own service process.
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_DIR"] = str(run_dir)
    project = _FORBIDDEN.sub("-", name) or "landseg"
    return WandbLogger(
        name=version,
        save_dir=str(run_dir),
        version=_FORBIDDEN.sub("-", f"{project}-{version}"),
        offline=True,
        project=project,
        log_model=False,
    )
