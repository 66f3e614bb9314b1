"""Run folders: their layout and state (:mod:`.folder`), and the runs of an output folder
(:mod:`.catalog`: list, find, archive)."""

from landseg.runs.folder import (
    RUN_DIR_ENV,
    CheckpointName,
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
