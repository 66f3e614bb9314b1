"""Loggers of the model's state: TensorBoard per phase, the run logger, figures, W&B.

Python's ``logging`` records the state of the code; these record the state of the model.
"""

from landseg.loggers.layer import RunLogger, read_scalars
from landseg.loggers.tensorboard import PhaseTensorBoardLogger, find_phase_logger
from landseg.loggers.wandb import make_wandb_logger

__all__ = [
    "PhaseTensorBoardLogger",
    "RunLogger",
    "find_phase_logger",
    "make_wandb_logger",
    "read_scalars",
]
