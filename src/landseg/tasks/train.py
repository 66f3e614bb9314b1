"""``landseg train``: validated config -> datamodule + task -> Lightning trainer -> run folder.

Only rank 0 writes files. The processes Lightning starts for DDP re-run the same command and
find the run folder through ``LANDSEG_RUN_DIR``, so every rank uses one folder.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)

from landseg.callbacks.cadence import VisualCadence
from landseg.callbacks.exports import PthExport, export_model
from landseg.callbacks.history import HistoryWriter
from landseg.callbacks.run_state import RunStateUpdater
from landseg.catalog import refuse_live_run
from landseg.config.schema import DeviceSetup, LandsegConfig
from landseg.data.datamodule import DATAMODULES
from landseg.data.resumable import ResumeTracker
from landseg.data.summary import DataSummary
from landseg.errors import LandsegError
from landseg.io import (
    UnsafeCheckpointError,
    atomic_write_json,
    atomic_write_text,
    checkpoint_error_line,
    load_checkpoint,
    remove_stale_temporaries,
)
from landseg.runs import (
    CONFIG_FILE,
    HISTORY_FILE,
    RUN_DIR_ENV,
    TEST_HISTORY_FILE,
    RunFolder,
    initial_state,
    now_iso,
    resolve_run_folder,
)
from landseg.tasks.checkpoint_io import AtomicCheckpointIO
from landseg.tasks.segmentation import SegmentationTask

log = logging.getLogger("landseg.train")


# ---------------------------------------------------------------------------- devices


def lightning_device_args(device: DeviceSetup) -> dict[str, Any]:
    """Map 004's device_setup onto Lightning's accelerator/devices/strategy/num_nodes.

    ``device: 0`` means the CPU (004). On the CPU, ``num_processes`` is the number of
    processes (DDP with gloo when > 1).
    """
    accelerator = (device.accelerator or "auto").lower()
    value = device.device
    if value == 0 or (value == "0" and accelerator == "cpu"):
        accelerator = "cpu"
    if accelerator == "cpu":
        devices: Any = device.num_processes
    elif value is None:
        devices = "auto"
    elif isinstance(value, str):
        devices = [int(part) for part in value.split(",")]
    else:
        devices = value
    strategy = device.strategy or "auto"
    if strategy == "auto" and accelerator == "cpu" and device.num_processes > 1:
        strategy = "ddp"
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": device.num_nodes,
        "strategy": strategy,
        "precision": device.precision,
    }


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_base_name(config: LandsegConfig) -> str:
    name = config.output_setup.model_filename or config.train_setup.model_name
    return Path(name.replace(":", "-")).stem


class StepCheckpoint(ModelCheckpoint):
    """Checkpoints every N training steps, except on a step that a validation follows.

    A checkpoint taken there would resume past the validation without running it; the
    validation's own checkpoints (top-k, last) follow within moments anyway.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        batch_idx = kwargs.get("batch_idx", args[-1] if args else 0)
        done = batch_idx + 1
        val_every = trainer.val_check_batch
        if done >= trainer.num_training_batches or (
            isinstance(val_every, int) and done % val_every == 0
        ):
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)


class LastCheckpoint(ModelCheckpoint):
    """Writes ``<name>-last`` after every validation (or epoch, without one).

    Lightning's own ``save_last`` writes ``last`` only at a step where the same callback
    also saved a top-k file, which a callback that keeps no top-k never does.
    """

    def __init__(self, dirpath: Path, name: str):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True)
        self.CHECKPOINT_NAME_LAST = name

    def _save_last_now(self, trainer: pl.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)


def keep_newest_step_checkpoint(run: RunFolder) -> None:
    """Drop older step checkpoints: Lightning never deletes the one a run resumed from."""
    steps = sorted(run.checkpoints.glob("*-step=*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    for path in steps[:-1]:
        path.unlink(missing_ok=True)


def checkpoint_callbacks(config: LandsegConfig, run: RunFolder) -> list[ModelCheckpoint]:
    """Top-k by lowest val_loss, top-k by highest val_miou, step checkpoints.

    ``last`` is added by :func:`build_trainer` after all of them, so that it records their
    bookkeeping for the same validation: a run resumed from it keeps the right top-k files.
    """
    base = checkpoint_base_name(config)
    k = config.output_setup.save_top_k
    common = {"dirpath": run.checkpoints, "auto_insert_metric_name": False}
    callbacks = []
    if k > 0:
        callbacks.append(
            ModelCheckpoint(
                filename=f"{base}-loss-epoch={{epoch:03d}}-val_loss={{val_loss:.4f}}",
                monitor="val_loss",
                mode="min",
                save_top_k=k,
                **common,
            )
        )
        callbacks.append(
            ModelCheckpoint(
                filename=f"{base}-miou-epoch={{epoch:03d}}-val_miou={{val_miou:.4f}}",
                monitor="val_miou",
                mode="max",
                save_top_k=k,
                **common,
            )
        )
    steps = config.train_setup.checkpoint_every_n_steps
    if steps:
        callbacks.append(
            StepCheckpoint(
                filename=f"{base}-step={{step:07d}}",
                every_n_train_steps=steps,
                save_top_k=1,
                monitor="step",
                mode="max",
                **common,
            )
        )
    return callbacks


def latest_checkpoint(run: RunFolder) -> Path | None:
    """The checkpoint with the most training steps among ``last`` and the step checkpoints."""
    candidates = [
        p for p in run.checkpoints.glob("*.ckpt") if "-last" in p.stem or "-step=" in p.stem
    ]
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


# ---------------------------------------------------------------------------- trainer


def visual_cadence(config: LandsegConfig) -> VisualCadence:
    """When the run's figures, image grids and histograms are drawn (``figures_every_n_epochs``)."""
    every = config.output_setup.figures_every_n_epochs
    return VisualCadence(every_n_epochs=None if every == "auto" else every)


def build_callbacks(
    config: LandsegConfig, run: RunFolder, cadence: VisualCadence | None = None
) -> list[Callback]:
    out = config.output_setup
    cadence = cadence or visual_cadence(config)
    callbacks: list[Callback] = [ResumeTracker(), RunStateUpdater(run)]
    callbacks += checkpoint_callbacks(config, run)
    if out.save_history:
        callbacks.append(HistoryWriter(run.path / HISTORY_FILE, run.path / TEST_HISTORY_FILE))
    if out.extension == ".pth":
        callbacks.append(PthExport(run.path, checkpoint_base_name(config)))
    stopping = config.train_setup.early_stopping
    if stopping is not None:
        callbacks.append(
            EarlyStopping(
                monitor=stopping.monitor,
                mode=stopping.mode,
                patience=stopping.patience,
                min_delta=stopping.min_delta,
            )
        )
    if out.log_learning_rate:
        callbacks.append(LearningRateMonitor(logging_interval="epoch", log_momentum=True))
    if out.progress > 0:
        callbacks.append(TQDMProgressBar(refresh_rate=out.progress))
    if out.use_tensorboard:
        from landseg.callbacks.images import ImageSamples
        from landseg.callbacks.weights import ModelGraph, WeightHistograms

        callbacks += [ImageSamples(cadence=cadence), WeightHistograms(cadence), ModelGraph()]
    return callbacks


def build_loggers(config: LandsegConfig, run: RunFolder) -> list[Any]:
    out = config.output_setup
    loggers: list[Any] = []
    if out.use_tensorboard:
        from landseg.loggers.tensorboard import PhaseTensorBoardLogger

        loggers.append(PhaseTensorBoardLogger(run.path / "tensorboard"))
    if out.use_wandb:
        from landseg.loggers.wandb import make_wandb_logger

        loggers.append(make_wandb_logger(run.path, run.path.parent.name, run.path.name))
    return loggers


def build_trainer(
    config: LandsegConfig, run: RunFolder, extra_callbacks: list[Callback] | None = None
) -> pl.Trainer:
    train = config.train_setup
    loggers = build_loggers(config, run)
    cadence = visual_cadence(config)  # one for every drawing callback: they draw together
    callbacks = build_callbacks(config, run, cadence) + list(extra_callbacks or [])
    # ``last`` after every other checkpoint (the callers' too): it records their state for
    # the same validation, so nothing a resume starts from is newer than it
    callbacks.append(LastCheckpoint(run.checkpoints, f"{checkpoint_base_name(config)}-last"))
    if loggers and config.output_setup.use_tensorboard:
        from landseg.loggers.layer import RunLogger

        tensorboard = loggers[0]
        callbacks.append(RunLogger(run.path, tensorboard, cadence))
    val_check = train.val_check_interval
    return pl.Trainer(
        max_epochs=train.epochs,
        default_root_dir=run.path,
        logger=loggers or False,
        callbacks=callbacks,
        deterministic="warn" if train.deterministic else None,
        val_check_interval=val_check,
        check_val_every_n_epoch=1 if isinstance(val_check, float) else None,
        num_sanity_val_steps=0,
        enable_progress_bar=config.output_setup.progress > 0,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the datamodule's sampler shards by rank itself
        log_every_n_steps=1,
        plugins=[AtomicCheckpointIO()],
        **lightning_device_args(config.device_setup),
    )


# ---------------------------------------------------------------------------- the run


def _setup_file_logging(run: RunFolder, verbose: bool) -> logging.Handler:
    handler = logging.FileHandler(run.path / "train.log")
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("landseg", "lightning.pytorch"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


def _run_is_complete(run: RunFolder, config: LandsegConfig) -> bool:
    state = run.read_state()
    if state.get("status") != "finished":
        return False
    return (
        bool(state.get("early_stopped")) or state.get("epochs_done", 0) >= config.train_setup.epochs
    )


def _write_run_files(config: LandsegConfig, run: RunFolder, task: SegmentationTask) -> None:
    atomic_write_json(run.path / CONFIG_FILE, config.model_dump(mode="json"))
    atomic_write_text(run.path / "model_summary.txt", f"{task.model}\n\n{_parameter_count(task)}\n")
    previous = run.read_state()
    state = initial_state(config)
    if previous:
        state["started"] = previous.get("started", state["started"])
        state["resumed"] = [*previous.get("resumed", []), now_iso()]
        state["best"] = previous.get("best", {})
        state["epochs_done"] = previous.get("epochs_done", 0)
    run.update_state(**state)


def _parameter_count(task: SegmentationTask) -> str:
    total = sum(p.numel() for p in task.model.parameters())
    trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    return f"parameters: {total:,} ({trainable:,} trainable)"


def train(
    config: LandsegConfig,
    summary: DataSummary,
    *,
    verbose: bool = False,
    run: RunFolder | None = None,
    checkpoint: Path | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> Path:
    """Train (or continue) one run and return its folder.

    ``run`` and ``checkpoint`` override the folder and checkpoint that the config implies
    (``--resume`` and cross-validation jobs use them).
    """
    run = run or resolve_run_folder(config)
    rank_zero = RUN_DIR_ENV not in os.environ
    if rank_zero and run.resuming:
        refuse_live_run(run.path)
    handler = _setup_file_logging(run, verbose) if rank_zero else None
    try:
        return _train_in(run, config, summary, rank_zero, checkpoint, extra_callbacks)
    finally:
        if handler is not None:
            for name in ("landseg", "lightning.pytorch"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def _train_in(
    run: RunFolder,
    config: LandsegConfig,
    summary: DataSummary,
    rank_zero: bool,
    checkpoint: Path | None,
    extra_callbacks: list[Callback] | None,
) -> Path:
    ckpt_path = checkpoint or (latest_checkpoint(run) if run.resuming else None)
    if run.resuming and _run_is_complete(run, config):
        print(f"{run.path}: finished ({config.train_setup.epochs} epochs); nothing left to do")
        return run.path
    pl.seed_everything(config.train_setup.random_seed, workers=True, verbose=False)
    datamodule = DATAMODULES.get("csv")(config, summary)
    task = SegmentationTask(
        config.model_dump(mode="json"), summary.n_image_bands, list(summary.class_labels)
    )
    if rank_zero:
        if run.resuming:
            prune_checkpoints_after(run, ckpt_path)
            for path in remove_stale_temporaries(run.path):
                log.info("removing %s, left by an interrupted write", path.relative_to(run.path))
        _write_run_files(config, run, task)
        os.environ[RUN_DIR_ENV] = str(run.path)
        log.info(
            "run folder %s%s", run.path, f", resuming from {ckpt_path.name}" if ckpt_path else ""
        )
    trainer = build_trainer(config, run, extra_callbacks)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt
        early = any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks)
        _after_fit(config, run, trainer, task, datamodule)
    except (KeyboardInterrupt, SystemExit):
        if rank_zero:
            run.update_state(status="interrupted", ended=now_iso())
        raise
    except BaseException as error:
        if rank_zero:
            run.update_state(
                status="failed", ended=now_iso(), error=f"{type(error).__name__}: {error}"
            )
        raise
    finally:
        if rank_zero:
            os.environ.pop(RUN_DIR_ENV, None)
    if trainer.is_global_zero:
        keep_newest_step_checkpoint(run)
        run.update_state(status="finished", ended=now_iso(), early_stopped=early)
    return run.path


def best_loss_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best val_loss checkpoint (None with save_top_k 0: the caller uses ``last``)."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor == "val_loss" and callback.best_model_path:
            return callback.best_model_path
    return None


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
        trainer.test(task, datamodule=datamodule, ckpt_path=best or "last", weights_only=True)
    if not trainer.is_global_zero:
        return
    if best:
        task = SegmentationTask.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    if config.output_setup.get_prediction:
        from landseg.tasks.predict import predict_split

        predict_split(
            task,
            datamodule,
            "test",
            run.path / "predictions",
            config.output_setup.prediction_output_type,
        )
    exports = config.train_setup.export_checkpoint
    for fmt in [exports] if isinstance(exports, str) else exports or []:
        path = export_model(
            task, fmt.lower().lstrip("."), run.checkpoints / f"{checkpoint_base_name(config)}-best"
        )
        log.info("exported %s", path)


def resume_from_checkpoint(checkpoint: Path, *, verbose: bool = False) -> Path:
    """``landseg train --resume CKPT``: the config travels inside the checkpoint.

    The run continues in the folder that holds the checkpoint, from that checkpoint.
    """
    from landseg.config.checks import check_config
    from landseg.config.load import validate_config
    from landseg.data.checks import check_data

    try:
        state = load_checkpoint(checkpoint)
    except Exception as error:
        raise LandsegError(checkpoint_error_line(checkpoint, error)) from error
    try:
        raw = state["hyper_parameters"]["config"]
    except (KeyError, TypeError) as error:
        raise LandsegError(f"{checkpoint}: checkpoint holds no landseg config") from error
    raw["train_setup"]["continue_training"] = True
    config = check_config(validate_config(raw))
    summary = check_data(config)
    run = RunFolder(checkpoint.resolve().parent.parent, resuming=True)
    return train(config, summary, verbose=verbose, run=run, checkpoint=checkpoint)
