"""Trainer assembly: a checked config and a run folder -> Lightning's Trainer, callbacks, loggers.

Which callbacks a run gets, in which order, and with which loggers is decided here and only
here; each callback owns its files and its resumable state (``callbacks/``), each logger is
one entry of :data:`landseg.loggers.registry.LOGGERS`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import Logger

from landseg.callbacks.cadence import VisualCadence
from landseg.callbacks.checkpoints import LastCheckpoint, StepCheckpoint, top_k_checkpoints
from landseg.callbacks.early_stopping import ConfiguredEarlyStopping
from landseg.callbacks.freeze_encoder import FreezeEncoder
from landseg.callbacks.graceful_stop import GracefulStop
from landseg.callbacks.history import HistoryWriter
from landseg.callbacks.progress import progress_bar
from landseg.callbacks.pth_export import PthExport
from landseg.callbacks.run_logger import RunLogger
from landseg.callbacks.run_state import RunStateUpdater
from landseg.config.schema import LandsegConfig
from landseg.core.signals import StopSignals, keep_lightning_off_signals
from landseg.data.resumable import ResumeTracker
from landseg.launch.cluster import launched_by_mpi
from landseg.loggers.registry import build_loggers
from landseg.loggers.tensorboard import PhaseTensorBoardLogger
from landseg.runs.checkpoints import base_name
from landseg.runs.folder import RunFolder
from landseg.training.checkpoint_io import AtomicCheckpointIO


def visual_cadence(config: LandsegConfig) -> VisualCadence:
    """When the run's figures, image grids and histograms are drawn (``figures_every_n_epochs``)."""
    every = config.output_setup.figures_every_n_epochs
    return VisualCadence(every_n_epochs=None if every == "auto" else every)


def build_callbacks(
    config: LandsegConfig,
    run: RunFolder,
    loggers: list[Logger],
    cadence: VisualCadence | None = None,
) -> list[Callback]:
    """Every callback of a run except ``last`` (see :func:`build_trainer`)."""
    out, train = config.output_setup, config.train_setup
    cadence = cadence or visual_cadence(config)
    base = base_name(config)
    callbacks: list[Callback] = [ResumeTracker(), RunStateUpdater(run)]
    if train.freeze_encoder_epochs:
        callbacks.append(FreezeEncoder(train.freeze_encoder_epochs))
    if out.extension == ".pth":  # ODEON's .pth files are the kept models; .ckpt: last alone
        callbacks.append(PthExport(run.path, base))
    else:
        callbacks += top_k_checkpoints(run.checkpoints, base, out.save_top_k)
    if train.checkpoint_every_n_steps:
        callbacks.append(StepCheckpoint(run.checkpoints, base, train.checkpoint_every_n_steps))
    if out.save_history:
        callbacks.append(HistoryWriter(run.history, run.test_history))
    stopping = train.early_stopping
    if stopping is not None:
        callbacks.append(
            ConfiguredEarlyStopping(
                monitor=stopping.monitor,
                mode=stopping.mode,
                patience=stopping.patience,
                min_delta=stopping.min_delta,
            )
        )
    if out.log_learning_rate:
        callbacks.append(LearningRateMonitor(logging_interval="epoch", log_momentum=True))
    bar = progress_bar(out.progress, run.path.name)  # rich at a terminal, else plain lines
    if bar is not None:
        callbacks.append(bar)
    # the run's own files (scalars, arrays, figures): always, whichever loggers there are
    callbacks.append(RunLogger(run.path, loggers, cadence))
    from landseg.callbacks.images import ImageSamples
    from landseg.maps.style import rgb_palette

    colors = config.output_setup.class_colors  # checked against the classes before training
    palette = rgb_palette(colors) if colors else None
    callbacks.append(ImageSamples(cadence=cadence, palette=palette))
    if any(isinstance(logger, PhaseTensorBoardLogger) for logger in loggers):
        from landseg.callbacks.weights import ModelGraph, WeightHistograms

        callbacks += [WeightHistograms(cadence), ModelGraph()]
    return callbacks


def trainer_plugins(standalone: bool = False) -> list[Any]:
    """Atomic checkpoint writes, and the cluster environment.

    Under SLURM, Lightning's SLURM environment without its auto-requeue (it checkpoints from
    inside the signal handler at an arbitrary moment, and landseg stops at a resumable point
    itself: see callbacks/graceful_stop.py; the requeue is :mod:`landseg.launch.cluster`'s).
    ``standalone`` (a cross-validation task) trains in this process alone: Lightning's default
    environment, not the SLURM one, which would make the task join all of the job's SLURM
    tasks (``srun -n 8 landseg cv``: eight cv workers, not one DDP run of eight). A process
    that no launcher started (SLURM, torchrun, LSF, MPI) gets that default environment here,
    as Lightning would give it, so that Lightning does not initialise MPI to find out.
    """
    from lightning.pytorch.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    plugins: list[Any] = [AtomicCheckpointIO()]
    if standalone:
        plugins.append(LightningEnvironment())
    elif SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    elif not (launched_by_mpi() or TorchElasticEnvironment.detect() or LSFEnvironment.detect()):
        # what Lightning would choose, without its last probe: MPIEnvironment.detect imports
        # mpi4py and initialises MPI (0.1 s here, seconds on some clusters' login nodes) to
        # learn that a process no MPI launcher started is alone
        plugins.append(LightningEnvironment())
    return plugins


def build_trainer(
    config: LandsegConfig,
    run: RunFolder,
    extra_callbacks: list[Callback] | None = None,
    stop_signals: StopSignals | None = None,
    standalone: bool = False,
) -> pl.Trainer:
    train = config.train_setup
    loggers = build_loggers(config.output_setup.logger_names(), run)
    cadence = visual_cadence(config)  # one for every drawing callback: they draw together
    callbacks = build_callbacks(config, run, loggers, cadence) + list(extra_callbacks or [])
    # ``last`` after every other checkpoint (the callers' too): it records their state for
    # the same validation, so nothing a resume starts from is newer than it; a stop signal
    # is acted on after all of them
    base = base_name(config)
    callbacks.append(LastCheckpoint(run.checkpoints, base))
    callbacks.append(GracefulStop(run.checkpoints, base, stop_signals))
    val_check = train.val_check_interval
    trainer = pl.Trainer(
        max_epochs=train.epochs,
        default_root_dir=run.path,
        logger=loggers or False,
        callbacks=callbacks,
        deterministic="warn" if train.deterministic else None,
        # cuDNN tries its convolution algorithms on the first batch of each shape and keeps
        # the fastest (tiles have one size): the GPU fast path, which picks algorithms by
        # timing, so only for runs that do not ask to be deterministic
        benchmark=None if train.deterministic else True,
        val_check_interval=val_check,
        check_val_every_n_epoch=1 if isinstance(val_check, float) else None,
        num_sanity_val_steps=0,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        use_distributed_sampler=False,  # the datamodule's sampler shards by rank itself
        log_every_n_steps=1,
        plugins=trainer_plugins(standalone),
        **config.device_setup.lightning_args(),
    )
    keep_lightning_off_signals(trainer)  # landseg alone decides on stop signals
    if train.freeze_encoder_epochs:
        find_unused_parameters(trainer)
    return trainer


def find_unused_parameters(trainer: pl.Trainer) -> None:
    """Under DDP (whichever way Lightning chose it: ``ddp``, ``ddp_spawn``, ``auto`` on several
    devices), let the network have parameters without a gradient: a frozen encoder's
    (``train_setup.freeze_encoder_epochs``). DDP's reducer otherwise waits for their gradients
    and stops at the second step. The DDP wrapper is made when fitting starts, from the
    strategy's keyword arguments, so setting the flag now is in time; it costs a walk of the
    autograd graph per step, so only runs that freeze pay it. Lightning has no public setter
    once the strategy is built (tests/test_lightning_private.py watches the attribute).
    """
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        strategy._ddp_kwargs["find_unused_parameters"] = True
