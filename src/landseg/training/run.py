"""A run's lifecycle: its plan executed: run folder -> fit -> test, predict, export -> run.json.

``landseg train`` and every cross-validation task come through :func:`train`, which plans the
run (:func:`landseg.planning.run_plan.plan_run`: the folder, its refusals, what a continued run
changes, the precision) and executes the plan (:func:`execute`); ``landseg train --resume
CKPT`` through :func:`resume_from_checkpoint`. Only rank 0 writes files. The processes
Lightning starts for DDP re-run the same command and find the run folder through
``LANDSEG_RUN_DIR``, so every rank uses one folder. Which callbacks and loggers a run has is
:mod:`landseg.training.trainer`'s concern.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import Callback, EarlyStopping

from landseg.callbacks.progress import is_terminal
from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError, LandsegError, StopRequested
from landseg.core.files import atomic_write_json, atomic_write_text, remove_stale_temporaries
from landseg.core.signals import StopSignals
from landseg.data.datamodule import DATAMODULES
from landseg.data.summary import DataSummary
from landseg.data.transport import compact_for
from landseg.inference.split import predict_split
from landseg.launch.cluster import external_launch, requeue_wanted
from landseg.launch.handshake import DecisionBoard, RunDecision, receive_decision
from landseg.launch.hardware import FastPaths
from landseg.models.export import export_formats, export_model
from landseg.models.pretrained import export_record
from landseg.planning.prepare import weights_normalization_record
from landseg.planning.pretrained import load_encoder_weights
from landseg.planning.run_plan import TrainPlan, fast_paths, plan_resume, plan_run
from landseg.runs.checkpoints import (
    WeightsFileError,
    WeightsMismatchError,
    base_name,
    best_of_fit,
    export_stem,
    load_weights,
)
from landseg.runs.folder import (
    RUN_DIR_ENV,
    RunFolder,
    make_run_folder,
)
from landseg.tasks.segmentation import SegmentationTask
from landseg.training.trainer import build_trainer

log = logging.getLogger("landseg.train")


# ---------------------------------------------------------------------------- the run


def _setup_file_logging(run: RunFolder) -> logging.Handler:
    """The run's train.log, at the level the entry point gave landseg's logger (``-v``:
    debug), and at least info (a run started from Python, with logging left unset)."""
    level = min(logging.getLogger("landseg").getEffectiveLevel(), logging.INFO)
    handler = logging.FileHandler(run.train_log)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("landseg", "lightning.pytorch"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
    return handler


def _write_run_files(
    config: LandsegConfig,
    run: RunFolder,
    task: SegmentationTask,
    changes: dict[str, list[Any]],
    fast: FastPaths,
    summary: DataSummary,
) -> None:
    atomic_write_json(run.config_file, config.model_dump(mode="json"))
    atomic_write_text(run.model_summary, f"{task.model}\n\n{_parameter_count(task)}\n")
    run.record_start(config, changes, fast)
    record = weights_normalization_record(config, summary)
    if record is not None:
        run.update_state(normalization_from_weights=record)


def _parameter_count(task: SegmentationTask) -> str:
    total = sum(p.numel() for p in task.model.parameters())
    trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    return f"parameters: {total:,} ({trainable:,} trainable)"


def load_initial_weights(task: SegmentationTask, checkpoint: Path) -> None:
    """``train_setup.init_weights``: the network weights of another run's checkpoint (weights
    it has that this network has not are left out)."""
    key = "train_setup.init_weights"
    try:
        load_weights(task.model, checkpoint, allow_unexpected=True)
    except WeightsFileError as error:
        raise ConfigError(f"{key}: {error.problems[0]}") from error
    except WeightsMismatchError as error:
        raise ConfigError(
            f"{key}: {checkpoint} holds another network than train_setup.model_name "
            f"{task.config.train_setup.model_name!r} with these bands and classes: "
            f"{error.report.detail()}"
        ) from error


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
    try:  # plan, then execute: a refusal reaches the launch's other ranks through the board
        plan = plan_run(config, summary, run=run, checkpoint=checkpoint)
        return execute(plan, extra_callbacks=extra_callbacks, board=board, standalone=standalone)
    except LandsegError as error:
        if board is not None:
            board.publish(RunDecision(error=error.problems[0]))
        raise
    finally:
        if board is not None:
            board.close()


def execute(
    plan: TrainPlan,
    *,
    extra_callbacks: list[Callback] | None = None,
    board: DecisionBoard | None = None,
    standalone: bool = False,
) -> Path:
    """Carry out a run's plan: a finished run is left as it is; otherwise its folder is
    made and the run trains (``board``: where rank 0 tells a launch's other ranks)."""
    run = plan.run
    if plan.done is not None:
        print(f"{run.path}: {plan.done}")
        if board is not None:
            board.publish(RunDecision(run=str(run.path), finished=True))
        return run.path
    if plan.decides:  # remembers what it made, for a start that fails before its run.json
        run = dataclasses.replace(run, made=make_run_folder(run.path))
    handler = _setup_file_logging(run) if plan.decides else None
    returned = False
    try:
        path = _train_with_signals(
            _ProcessRun(
                run,
                plan.config,
                plan.summary,
                rank_zero=plan.decides,
                checkpoint=plan.checkpoint,
                extra_callbacks=extra_callbacks,
                changes=plan.changes,
                board=board,
                standalone=standalone,
                fast_paths_given=plan.fast,
            )
        )
        returned = True
        return path
    finally:
        if handler is not None:
            for name in ("landseg", "lightning.pytorch"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()
        if plan.decides and not returned:  # failed before its run.json: nothing worth keeping
            run.remove_failed_start()


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
    ckpt_path = process.checkpoint or (run.latest_checkpoint() if run.resuming else None)
    fast = fast_paths(config, run, process.fast_paths_given)
    trained = resolved_device(config, fast)  # what Lightning trains with; the task keeps config
    pl.seed_everything(config.train_setup.random_seed, workers=True, verbose=False)
    task = SegmentationTask(
        config.model_dump(mode="json"),
        summary.n_image_bands,
        list(summary.class_labels),
        channels_last=fast.channels_last,
    )
    pretrained = None
    if ckpt_path is None:  # a new run: a continued one has them in its checkpoint
        pretrained = load_encoder_weights(task.model, config, summary.n_image_bands)
    if ckpt_path is None and config.train_setup.init_weights is not None:
        load_initial_weights(task, config.train_setup.init_weights)
    if config.train_setup.compile:  # in place: the state_dict keys stay the network's
        task.model.compile()
    if rank_zero:
        if run.resuming:
            run.checkpoint_folder.prune_after(ckpt_path)
            for path in remove_stale_temporaries(run.path):
                log.info("removing %s, left by an interrupted write", path.relative_to(run.path))
        _write_run_files(config, run, task, changes, fast, summary)
        if pretrained is not None:
            run.update_state(encoder_weights=pretrained)
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
        # uint8 batches from the loader workers, scaled on the device (landseg.data.transport)
        if hasattr(datamodule, "compact_transport"):
            on_gpu = isinstance(trainer.accelerator, CUDAAccelerator)
            cast(Any, datamodule).compact_transport = compact_for(on_gpu)
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
            run.record_end("interrupted")
        if isinstance(stop, StopRequested):
            stop.run = run.path  # for the line that says how to continue
        if isinstance(stop, SystemExit) and isinstance(stop.__context__, KeyboardInterrupt):
            # Lightning ends a KeyboardInterrupt in fit or test (a second Ctrl-C) with
            # sys.exit(1): the command exits 130 with its line, as after any Ctrl-C
            raise stop.__context__ from None
        raise
    except BaseException as error:
        if rank_zero:
            run.record_end("failed", error=failure_line(error))
        raise
    finally:
        if hasattr(datamodule, "shutdown_workers"):  # workers end now, not at exit
            datamodule.shutdown_workers()
        if rank_zero:
            os.environ.pop(RUN_DIR_ENV, None)
    if trainer.is_global_zero:
        run.checkpoint_folder.keep_newest_step()
        run.record_end("finished", early_stopped=early)
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
    best = best_of_fit(trainer)
    if config.data_source.test_file is not None:
        with float32_stage(trainer):
            trainer.test(
                task,
                datamodule=datamodule,
                ckpt_path=best or "last",
                weights_only=True,
                # Lightning's table at a terminal; elsewhere the progress bar's plain line
                verbose=config.output_setup.progress > 0 and is_terminal(sys.stderr),
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
    stem = export_stem(run.checkpoints, base_name(config))
    pretrained = run.state().encoder_weights
    metadata = {"encoder_weights": export_record(pretrained)} if pretrained else None
    for fmt in export_formats(config.train_setup.export_checkpoint):
        path = export_model(task.model, task.in_channels, fmt, stem, metadata)
        log.info("exported %s", path)


def resume_from_checkpoint(checkpoint: Path, overrides: list[str] | None = None) -> Path:
    """``landseg train --resume CKPT [--set KEY=VALUE ...]``: planned by
    :func:`~landseg.planning.run_plan.plan_resume`, then trained in the checkpoint's run."""
    prepared, run = plan_resume(checkpoint, overrides)
    return train(prepared.config, prepared.summary, run=run, checkpoint=checkpoint)
