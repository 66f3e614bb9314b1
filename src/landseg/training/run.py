"""A run's lifecycle: checked config -> run folder -> fit -> test, predict, export -> run.json.

``landseg train`` and every cross-validation task come through :func:`train`; ``landseg train
--resume CKPT`` through :func:`resume_from_checkpoint`. Only rank 0 writes files. The processes
Lightning starts for DDP re-run the same command and find the run folder through
``LANDSEG_RUN_DIR``, so every rank uses one folder. Which callbacks and loggers a run has is
:mod:`landseg.training.trainer`'s concern.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import Callback, EarlyStopping

from landseg.callbacks.checkpoints import best_loss_checkpoint, keep_newest_step_checkpoint
from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError, LandsegError, StopRequested
from landseg.core.files import (
    UnsafeCheckpointError,
    atomic_write_json,
    atomic_write_text,
    checkpoint_error_line,
    load_checkpoint,
    remove_stale_temporaries,
)
from landseg.core.signals import StopSignals
from landseg.data.datamodule import DATAMODULES
from landseg.data.summary import DataSummary
from landseg.inference.split import predict_split
from landseg.launch.cluster import external_launch, requeue_wanted
from landseg.launch.handshake import DecisionBoard, RunDecision, receive_decision
from landseg.launch.hardware import FastPaths, choose_fast_paths
from landseg.models.export import export_formats, export_model
from landseg.planning.prepare import prepare
from landseg.runs.catalog import refuse_archived_run, refuse_live_run
from landseg.runs.folder import (
    RUN_DIR_ENV,
    RunFolder,
    RunState,
    initial_state,
    now_iso,
    resolve_run_folder,
)
from landseg.tasks.segmentation import SegmentationTask
from landseg.training.trainer import build_trainer, checkpoint_base_name

log = logging.getLogger("landseg.train")


# ---------------------------------------------------------------------------- checkpoints


def latest_checkpoint(run: RunFolder) -> Path | None:
    """The checkpoint with the most training steps among ``last`` and the step checkpoints."""
    candidates = run.resumable_checkpoints()
    best: tuple[int, float, Path] | None = None
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
        except UnsafeCheckpointError as error:  # never skip past a crafted file silently
            raise LandsegError(str(error)) from error
        except Exception as error:  # a torn file from a crash: skip it, keep looking
            log.warning("skipping unreadable checkpoint %s: %s", path, error)
            continue
        key = (int(checkpoint.get("global_step", 0)), path.stat().st_mtime, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def prune_checkpoints_after(run: RunFolder, resumed_from: Path | None) -> list[Path]:
    """Remove checkpoints written after the one a run resumes from.

    They belong to the part of the run that is about to be trained again, and the restored
    top-k bookkeeping does not know them: kept, they would stay as stale "best" files, or
    make Lightning version the names of their recomputed twins (``-v1``).
    """
    if not run.checkpoints.is_dir():
        return []
    cutoff = resumed_from.stat().st_mtime_ns if resumed_from is not None else -1
    stale = [
        path
        for path in run.checkpoints.glob("*.ckpt")
        if path != resumed_from and path.stat().st_mtime_ns > cutoff
    ]
    for path in stale:
        log.info("removing %s, written after the checkpoint the run resumes from", path.name)
        path.unlink()
    return stale


# ---------------------------------------------------------------------------- the run


def _setup_file_logging(run: RunFolder, verbose: bool) -> logging.Handler:
    handler = logging.FileHandler(run.train_log)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("landseg", "lightning.pytorch"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


def _completion(run: RunFolder, config: LandsegConfig) -> str | None:
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


def _write_run_files(
    config: LandsegConfig,
    run: RunFolder,
    task: SegmentationTask,
    changes: dict[str, list[Any]],
) -> None:
    atomic_write_json(run.config_file, config.model_dump(mode="json"))
    atomic_write_text(run.model_summary, f"{task.model}\n\n{_parameter_count(task)}\n")
    previous = RunState.read(run.path)
    if previous is None and run.resuming and run.run_file.is_file():
        log.warning(
            "%s: unreadable (damaged?); rewritten without the run's start time and earlier resumes",
            run.run_file,
        )
    state = initial_state(config)
    if previous is not None and run.resuming:
        state = state.model_copy(
            update={
                "started": previous.started or state.started,
                "resumed": [*previous.resumed, {"at": now_iso(), "changed": changes}],
                "best": previous.best,
                "epochs_done": previous.epochs_done,
            }
        )
    state.write(run.path)


def _parameter_count(task: SegmentationTask) -> str:
    total = sum(p.numel() for p in task.model.parameters())
    trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    return f"parameters: {total:,} ({trainable:,} trainable)"


def load_initial_weights(task: SegmentationTask, checkpoint: Path) -> None:
    """``train_setup.init_weights``: the network weights of another run's checkpoint."""
    key = "train_setup.init_weights"
    try:
        state = load_checkpoint(checkpoint)
    except Exception as error:
        raise ConfigError(f"{key}: {checkpoint_error_line(checkpoint, error)}") from error
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ConfigError(f"{key}: {checkpoint}: not a landseg checkpoint (no state_dict)")
    network = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    own = task.model.state_dict()
    missing = sorted(own.keys() - network.keys())
    different = sorted(k for k in own.keys() & network.keys() if own[k].shape != network[k].shape)
    if missing or different:
        detail = (
            f"{len(missing)} weights missing (e.g. {missing[0]})"
            if missing
            else f"{different[0]} is {tuple(network[different[0]].shape)} there, "
            f"{tuple(own[different[0]].shape)} here"
        )
        raise ConfigError(
            f"{key}: {checkpoint} holds another network than train_setup.model_name "
            f"{task.config.train_setup.model_name!r} with these bands and classes: {detail}"
        )
    task.model.load_state_dict(network)


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


def resolved_device(config: LandsegConfig, fast: FastPaths) -> LandsegConfig:
    """``config`` with ``device_setup.precision`` and ``channels_last`` set to ``fast``'s."""
    device = config.device_setup.model_copy(
        update={"precision": fast.precision, "channels_last": fast.channels_last}
    )
    return config.model_copy(update={"device_setup": device})


def train(
    config: LandsegConfig,
    summary: DataSummary,
    *,
    verbose: bool = False,
    run: RunFolder | None = None,
    checkpoint: Path | None = None,
    extra_callbacks: list[Callback] | None = None,
    standalone: bool = False,
) -> Path:
    """Train (or continue) one run and return its folder.

    ``run`` and ``checkpoint`` override the folder and checkpoint that the config implies
    (``--resume`` and cross-validation jobs use them). A continued run is compared with the
    run's own config first, and refused before anything is written when a setting it may not
    change differs; a run that is complete is left as it is.

    When a launcher started several landseg processes (``srun``, ``torchrun``, one command
    per node), global rank 0 decides and the others train in its folder from its checkpoint
    (:mod:`landseg.launch.handshake`). ``standalone`` (cross-validation tasks) trains in this
    process alone, whatever SLURM says about the job's other tasks.
    """
    launch = None
    if not standalone and RUN_DIR_ENV not in os.environ:
        launch = external_launch(config.device_setup.num_nodes)
    if launch is not None and launch.rank != 0:
        decision = receive_decision(launch)
        if decision.error is not None:
            raise LandsegError(f"rank 0 refused the run: {decision.error}")
        assert decision.run is not None
        if decision.finished:
            return Path(decision.run)
        run = RunFolder(Path(decision.run), resuming=decision.resuming)
        given = None
        if decision.precision is not None:  # rank 0's choice: nodes may differ
            given = FastPaths(
                decision.precision, bool(decision.channels_last), "chosen by global rank 0"
            )
        return _train_with_signals(
            _ProcessRun(
                run,
                config,
                summary,
                rank_zero=False,
                checkpoint=decision.checkpoint_path,
                extra_callbacks=extra_callbacks,
                standalone=standalone,
                fast_paths_given=given,
            )
        )
    board = DecisionBoard(launch) if launch is not None else None
    try:
        return _train_as_rank_zero(
            config, summary, verbose, run, checkpoint, extra_callbacks, board, standalone
        )
    except LandsegError as error:
        if board is not None:
            board.publish(RunDecision(error=error.problems[0]))
        raise
    finally:
        if board is not None:
            board.close()


def _train_as_rank_zero(
    config: LandsegConfig,
    summary: DataSummary,
    verbose: bool,
    run: RunFolder | None,
    checkpoint: Path | None,
    extra_callbacks: list[Callback] | None,
    board: DecisionBoard | None,
    standalone: bool,
) -> Path:
    run = run or resolve_run_folder(config)
    rank_zero = RUN_DIR_ENV not in os.environ  # else a process Lightning started for DDP
    changes: dict[str, list[Any]] = {}
    if rank_zero and run.resuming:
        refuse_archived_run(run.path)
        refuse_live_run(run.path)
        changes = run.continuation_changes(config)
        done = _completion(run, config)
        if done is not None:
            print(f"{run.path}: {done}")
            if board is not None:
                board.publish(RunDecision(run=str(run.path), finished=True))
            return run.path
    handler = _setup_file_logging(run, verbose) if rank_zero else None
    try:
        return _train_with_signals(
            _ProcessRun(
                run,
                config,
                summary,
                rank_zero=rank_zero,
                checkpoint=checkpoint,
                extra_callbacks=extra_callbacks,
                changes=changes,
                board=board,
                standalone=standalone,
            )
        )
    finally:
        if handler is not None:
            for name in ("landseg", "lightning.pytorch"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


@dataclass
class _ProcessRun:
    """What this process trains, once decided (by this process, or by global rank 0 for the
    other ranks of a launch): carried whole through the signal handling into the fit."""

    run: RunFolder
    config: LandsegConfig
    summary: DataSummary
    rank_zero: bool  # writes the run's files
    checkpoint: Path | None  # to start from; None: the run's latest when it resumes
    extra_callbacks: list[Callback] | None
    changes: dict[str, list[Any]] = field(default_factory=dict)  # continued with these
    board: DecisionBoard | None = None  # where rank 0 tells the launch's other ranks
    standalone: bool = False
    fast_paths_given: FastPaths | None = None  # rank 0's precision, for the other ranks


def _train_with_signals(process: _ProcessRun) -> Path:
    with StopSignals(
        process.config.device_setup.stop_signal_numbers()
    ) as stop_signals:  # from the start: a Ctrl-C is never lost
        try:
            return _train_in(process, stop_signals)
        except StopRequested as stop:
            # SLURM's warning before the time limit (sbatch --signal=USR1@90): rank 0 asks
            # for the job to be queued again once the run is checkpointed and marked
            stop.requeue = process.rank_zero and requeue_wanted(
                stop.signum, process.config.device_setup.slurm_requeue
            )
            raise


def _train_in(process: _ProcessRun, stop_signals: StopSignals) -> Path:
    run, config, summary = process.run, process.config, process.summary
    rank_zero, changes, board = process.rank_zero, process.changes, process.board
    ckpt_path = process.checkpoint or (latest_checkpoint(run) if run.resuming else None)
    fast = fast_paths(config, run, process.fast_paths_given)
    trained = resolved_device(config, fast)  # what Lightning trains with; the task keeps config
    pl.seed_everything(config.train_setup.random_seed, workers=True, verbose=False)
    task = SegmentationTask(
        config.model_dump(mode="json"),
        summary.n_image_bands,
        list(summary.class_labels),
        channels_last=fast.channels_last,
    )
    if ckpt_path is None and config.train_setup.init_weights is not None:
        load_initial_weights(task, config.train_setup.init_weights)
    if config.train_setup.compile:  # in place: the state_dict keys stay the network's
        task.model.compile()
    if rank_zero:
        if run.resuming:
            prune_checkpoints_after(run, ckpt_path)
            for path in remove_stale_temporaries(run.path):
                log.info("removing %s, left by an interrupted write", path.relative_to(run.path))
        _write_run_files(config, run, task, changes)
        run.update_state(
            precision=fast.precision,
            channels_last=fast.channels_last,
            fast_paths_reason=fast.reason,
        )
        os.environ[RUN_DIR_ENV] = str(run.path)
        memory = ", channels-last" if fast.channels_last else ""
        log.info("precision %s%s (%s)", fast.precision, memory, fast.reason)
        log.info(
            "run folder %s%s", run.path, f", resuming from {ckpt_path.name}" if ckpt_path else ""
        )
        for key, (before, after) in changes.items():
            log.info("continued with %s changed: %r -> %r", key, before, after)
        if board is not None:  # the other ranks of the launch train here, from this checkpoint
            board.publish(
                RunDecision(
                    run=str(run.path),
                    checkpoint=str(ckpt_path) if ckpt_path else None,
                    resuming=run.resuming,
                    precision=fast.precision,
                    channels_last=fast.channels_last,
                )
            )
    datamodule = DATAMODULES.get("csv")(config, summary)
    try:
        trainer = build_trainer(
            trained, run, process.extra_callbacks, stop_signals, process.standalone
        )
        # uint8 batches from the loader workers, scaled on the GPU (landseg.data.transport)
        if hasattr(datamodule, "compact_transport"):
            on_gpu = isinstance(trainer.accelerator, CUDAAccelerator)
            cast(Any, datamodule).compact_transport = on_gpu
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt
        early = any(
            isinstance(c, EarlyStopping) and c.stopped_epoch > 0
            for c in trainer.callbacks  # type: ignore[attr-defined]
        )
        _after_fit(config, run, trainer, task, datamodule)
    except (KeyboardInterrupt, SystemExit, StopRequested) as stop:
        if rank_zero:
            run.update_state(status="interrupted", ended=now_iso())
        if isinstance(stop, StopRequested):
            stop.run = run.path  # for the line that says how to continue
        if isinstance(stop, SystemExit) and isinstance(stop.__context__, KeyboardInterrupt):
            # Lightning ends a KeyboardInterrupt in fit or test (a second Ctrl-C) with
            # sys.exit(1): the command exits 130 with its line, as after any Ctrl-C
            raise stop.__context__ from None
        raise
    except BaseException as error:
        if rank_zero:
            run.update_state(status="failed", ended=now_iso(), error=failure_line(error))
        raise
    finally:
        if hasattr(datamodule, "shutdown_workers"):  # workers end now, not at exit
            datamodule.shutdown_workers()
        if rank_zero:
            os.environ.pop(RUN_DIR_ENV, None)
    if trainer.is_global_zero:
        keep_newest_step_checkpoint(run)
        run.update_state(status="finished", ended=now_iso(), early_stopped=early)
    return run.path


def failure_line(error: BaseException) -> str:
    """What run.json records of a failure: the user's problem lines, or the exception."""
    if isinstance(error, LandsegError):
        return "; ".join(error.problems)
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def float32_stage(trainer: pl.Trainer) -> Iterator[None]:
    """Run a stage of ``trainer`` in float32 whatever precision it trained in.

    The test metrics describe the model as it is delivered: float32 weights predicted in
    float32 by ``landseg predict``, ``evaluate`` and the exports, so ``history_test.json``
    equals what ``landseg evaluate`` reports for the same checkpoint, bit for bit.
    """
    from lightning.pytorch.plugins.precision import Precision

    strategy = trainer.strategy
    trained_in = strategy.precision_plugin
    strategy.precision_plugin = Precision()
    try:
        yield
    finally:
        strategy.precision_plugin = trained_in


def _after_fit(
    config: LandsegConfig,
    run: RunFolder,
    trainer: pl.Trainer,
    task: SegmentationTask,
    datamodule: pl.LightningDataModule,
) -> None:
    """Test the best val_loss model, predict the test split, export extra formats."""
    best = best_loss_checkpoint(trainer)
    if config.data_source.test_file is not None:
        with float32_stage(trainer):
            trainer.test(
                task,
                datamodule=datamodule,
                ckpt_path=best or "last",
                weights_only=True,
                verbose=config.output_setup.progress > 0,  # progress 0: no table either
            )
    if not trainer.is_global_zero:
        return
    if best:
        task = SegmentationTask.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    out = config.output_setup
    if out.get_prediction:
        written = predict_split(
            task,
            datamodule,
            "test",
            run.predictions,
            out.prediction_output_type,
            tta=out.prediction_tta,
        )
        if out.prediction_vectors:
            from landseg.maps.vectorize import vectorize

            for raster in written:
                vectorize(raster, raster.with_suffix(".gpkg"), task.class_labels)
    stem = run.checkpoints / f"{checkpoint_base_name(config)}-best"
    for fmt in export_formats(config.train_setup.export_checkpoint):
        path = export_model(task.model, task.in_channels, fmt, stem)
        log.info("exported %s", path)


def resume_from_checkpoint(
    checkpoint: Path, overrides: list[str] | None = None, *, verbose: bool = False
) -> Path:
    """``landseg train --resume CKPT [--set KEY=VALUE ...]``: the config travels inside the
    checkpoint.

    The run continues in the folder that holds the checkpoint, from that checkpoint. ``--set``
    follows the rule of every continued run: only the settings that may change on continue
    (:mod:`landseg.config.continuation`) may differ from the run's.
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
    prepared = prepare(raw, overrides)
    return train(prepared.config, prepared.summary, verbose=verbose, run=run, checkpoint=checkpoint)
