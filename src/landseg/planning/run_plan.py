"""The plan of one training run: what ``landseg train`` will do, decided before anything is
written.

:func:`plan_train` is what ``landseg train`` and ``landseg validate`` both call for a train
config: the config and data checks (:func:`~landseg.planning.prepare.prepare`), then
:func:`plan_run`, the run folder's refusals in the one order they are made (an archive, a run
another process trains, settings a continued run may not change), what a continued run
changes, whether a finished run has anything left to do, and the precision it trains in. The
training layer executes the plan (:func:`landseg.training.run.train`); validate prints it
(:meth:`TrainPlan.describe`), so the two cannot disagree on what is refused.

Nothing here writes a file or creates a folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landseg.config.schema import LandsegConfig
from landseg.core.errors import LandsegError
from landseg.data.summary import DataSummary
from landseg.launch.hardware import FastPaths, choose_fast_paths
from landseg.planning.prepare import Prepared, prepare
from landseg.planning.pretrained import encoder_weights_plan
from landseg.runs.catalog import refuse_archived_run, refuse_live_run
from landseg.runs.checkpoints import checkpoint_error_line, load_checkpoint
from landseg.runs.folder import RUN_DIR_ENV, SLURM_DIR, RunFolder, RunState, resolve_run_folder

log = logging.getLogger("landseg.train")


@dataclass(frozen=True)
class TrainPlan:
    """One run, decided: its checked config and data, its folder (not yet made) and how it
    starts. ``done`` set: a finished run with nothing left to do, which is left as it is."""

    config: LandsegConfig
    summary: DataSummary
    run: RunFolder
    fast: FastPaths  # the precision and memory format it trains with
    checkpoint: Path | None = None  # to start from; None: the run's latest when it resumes
    changes: dict[str, list[Any]] = field(default_factory=dict)  # continued with these
    done: str | None = None
    decides: bool = True  # this process decided (rank 0), and writes the run's files
    trains_here: bool = True  # False: validated for other machines (--no-device-check)

    def describe(self) -> list[str]:
        """What ``landseg validate`` prints of the plan."""
        summary = self.summary
        how = "continues" if self.run.resuming else "starts"
        timed = self.config.output_setup.version_name is None and (
            self.run.path.parent.name != SLURM_DIR  # a SLURM job's run is named by the job
        )
        if self.done is not None:
            how = "is left as it is"
        elif timed and not self.run.resuming:
            how += " (named by the time it starts)"
        lines = [
            f"run folder {self.run.path}: {how}"
            + (f" ({self.done})" if self.done is not None else ""),
        ]
        for key, (before, after) in self.changes.items():
            lines.append(f"continued with {key} changed: {before!r} -> {after!r}")
        memory = ", channels-last" if self.fast.channels_last else ""
        precision = f"precision {self.fast.precision}{memory} ({self.fast.reason})"
        auto = self.config.device_setup.precision == "auto"
        if auto and not self.trains_here and not self.run.resuming:  # a continued run keeps its own
            precision = "precision auto: chosen on the machine that trains"
        lines += [
            precision,
            f"{summary.n_classes} classes ({', '.join(summary.class_labels)}), "
            f"{summary.n_image_bands} image bands, patches {summary.patch_size[0]}x"
            f"{summary.patch_size[1]}, splits {summary.split_sizes}",
            summary.report,
        ]
        if not self.run.resuming:  # a continued run has its weights in its checkpoint
            lines += encoder_weights_plan(self.config, summary.n_image_bands)
        return lines


def prepare_train(
    source: str | Path | Mapping[str, Any] | LandsegConfig,
    overrides: list[str] | None = None,
    *,
    device_check: bool = True,
) -> Prepared:
    """The config and data checks of ``landseg train``, with its note on job sections."""
    prepared = prepare(source, overrides, device_check=device_check)
    if prepared.config.cross_validation is not None or prepared.config.search is not None:
        log.warning(
            "cross_validation and search are for landseg cv and landseg tune; landseg "
            "train trains one model on data_source's files"
        )
    return prepared


def plan_train(
    source: str | Path | Mapping[str, Any],
    overrides: list[str] | None = None,
    *,
    device_check: bool = True,
) -> TrainPlan:
    """``landseg train -c CONFIG``'s plan: every check and refusal, in train's order."""
    prepared = prepare_train(source, overrides, device_check=device_check)
    plan = plan_run(prepared.config, prepared.summary)
    return dataclasses.replace(plan, trains_here=device_check)


def plan_run(
    config: LandsegConfig,
    summary: DataSummary,
    *,
    run: RunFolder | None = None,
    checkpoint: Path | None = None,
    fast: FastPaths | None = None,
) -> TrainPlan:
    """A checked config's run: its folder and its refusals, made by the process that decides
    (not a DDP process Lightning started in a folder chosen already, which follows it).

    ``run`` and ``checkpoint`` override the folder and checkpoint that the config implies
    (``--resume`` and cross-validation tasks); ``fast`` is global rank 0's precision, for the
    other ranks of a multi-node launch.
    """
    run = run or resolve_run_folder(config, create=False)
    decides = RUN_DIR_ENV not in os.environ  # else a process Lightning started for DDP
    changes: dict[str, list[Any]] = {}
    done = None
    if decides and run.resuming:
        refuse_archived_run(run.path)
        refuse_live_run(run.path)
        changes = run.continuation_changes(config)
        done = completion(run, config)
    return TrainPlan(
        config,
        summary,
        run,
        fast_paths(config, run, fast),
        checkpoint,
        changes,
        done,
        decides,
    )


def completion(run: RunFolder, config: LandsegConfig) -> str | None:
    """Why a finished run has nothing left to do, and what would give it more (None: it
    has something left)."""
    state = run.state()
    if state.status != "finished":
        return None
    if state.early_stopped:
        return f"ended by early stopping after {state.epochs_done} epochs; nothing left to do"
    if state.epochs_done >= config.train_setup.epochs:
        return (
            f"finished ({state.epochs_done} of {config.train_setup.epochs} epochs); nothing "
            "left to do (train longer with more epochs: --set train_setup.epochs=N)"
        )
    return None


def fast_paths(config: LandsegConfig, run: RunFolder, given: FastPaths | None) -> FastPaths:
    """The precision and memory format this run trains with (``auto`` resolved).

    A continued run keeps what its first launch chose (recorded in run.json), whatever this
    machine would choose: cluster nodes differ, and a run must not change precision midway.
    ``given`` is global rank 0's choice, for the other ranks of a multi-node launch.
    """
    if given is not None:
        return given
    device = config.device_setup
    if run.resuming:
        state = RunState.read(run.path)
        if state is not None and state.precision is not None:
            return FastPaths(
                state.precision,
                bool(state.channels_last),
                state.fast_paths_reason or "recorded in run.json",
            )
    return choose_fast_paths(
        device.precision, device.channels_last, device.lightning_args()["accelerator"]
    )


def plan_resume(checkpoint: Path, overrides: list[str] | None = None) -> tuple[Prepared, RunFolder]:
    """``landseg train --resume CKPT [--set KEY=VALUE ...]``: the config travels inside the
    checkpoint; the run continues in the folder that holds it, from it.

    ``--set`` follows the rule of every continued run: only the settings that may change on
    continue (:mod:`landseg.config.continuation`) may differ from the run's.
    """
    try:
        state = load_checkpoint(checkpoint)
    except Exception as error:
        raise LandsegError(checkpoint_error_line(checkpoint, error)) from error
    try:
        raw = state["hyper_parameters"]["config"]
    except (KeyError, TypeError) as error:
        raise LandsegError(f"{checkpoint}: checkpoint holds no landseg config") from error
    run = RunFolder(checkpoint.resolve().parent.parent, resuming=True)
    if not run.is_run or checkpoint.resolve().parent != run.checkpoints.resolve():
        # the run's files would be written two folders above the checkpoint, over whatever
        # is there
        raise LandsegError(
            f"{checkpoint}: not in the checkpoints folder of a run (no run.json in "
            f"{run.path}); --resume continues a run where it is: give the checkpoint inside "
            "its run folder, or start a run from these weights with "
            "train_setup.init_weights"
        )
    raw["train_setup"]["continue_training"] = True
    return prepare(raw, overrides), run
