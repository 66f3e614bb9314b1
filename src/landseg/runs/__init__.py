"""Run folders: their layout and state (:mod:`.folder`), their checkpoints
(:mod:`.checkpoints`), and the runs of an output folder (:mod:`.catalog`: list, find, archive)."""

from landseg.runs.checkpoints import CheckpointName
from landseg.runs.folder import (
    RUN_DIR_ENV,
    RunFolder,
    RunState,
    now_iso,
    resolve_run_folder,
)

__all__ = [
    "RUN_DIR_ENV",
    "CheckpointName",
    "RunFolder",
    "RunState",
    "now_iso",
    "resolve_run_folder",
]
