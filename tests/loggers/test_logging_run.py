"""The logger layer inside a real (tiny) Lightning training: what a user finds on disk.

landseg's own task (a lightunet) on random 16 x 16 tiles, 2 epochs of 2 batches on CPU.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from landseg.callbacks.cadence import VisualCadence
from landseg.callbacks.images import ImageSamples
from landseg.callbacks.run_logger import RunLogger, read_scalars
from landseg.callbacks.weights import ModelGraph, WeightHistograms
from landseg.config.schema import LandsegConfig
from landseg.loggers.tensorboard import PhaseTensorBoardLogger
from landseg.tasks.segmentation import SegmentationTask

N_CLASSES = 3
BANDS = 4
SIZE = 16


class TileDataset(Dataset[dict[str, Any]]):
    """Random normalised images and masks with some ignored (-1) pixels, fixed by ``seed``."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.images = rng.normal(size=(n, BANDS, SIZE, SIZE)).astype(np.float32)
        self.masks = rng.integers(-1, N_CLASSES, size=(n, SIZE, SIZE))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "image": torch.from_numpy(self.images[i]),
            "mask": torch.from_numpy(self.masks[i]),
            "index": i,
        }


class TileData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train_dataset = TileDataset(8, seed=1)
        self.val_dataset = TileDataset(4, seed=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=2)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def task_config(tmp: Path) -> dict[str, Any]:
    """A landseg config for the real task: lightunet, SGD with momentum (lr 0.1)."""
    config = LandsegConfig.model_validate(
        {
            "data_source": {"train_file": str(tmp / "unused.csv")},
            "train_setup": {
                "model_name": "lightunet",
                "lr": 0.1,
                "optimizer_config": {"optimizer": "sgd", "momentum": 0.9},
                "scheduler_config": {"scheduler": "reducelronplateau"},
            },
            "output_setup": {"output_folder": str(tmp)},
        }
    )
    return config.model_dump(mode="json")


class StoppingTask(SegmentationTask):
    """landseg's task, made to raise ``error`` when training reaches ``raise_at_step``."""

    def __init__(
        self,
        config: dict[str, Any],
        raise_at_step: int | None = None,
        error: type[BaseException] = RuntimeError,
    ):
        super().__init__(config, BANDS, [f"class{i}" for i in range(N_CLASSES)])
        self.raise_at_step = raise_at_step
        self.error = error

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.raise_at_step:
            raise self.error("stop at step 2")
        return super().training_step(batch, batch_idx)


def make_task(tmp: Path, **kwargs: Any) -> StoppingTask:
    torch.manual_seed(0)
    return StoppingTask(task_config(tmp), **kwargs)


def fit(
    run_dir: Path,
    task: SegmentationTask,
    epochs: int = 2,
    test: bool = False,
    cadence: VisualCadence | None = None,
    max_steps: int = -1,
) -> RunLogger:
    tb = PhaseTensorBoardLogger(run_dir / "tensorboard")
    run_logger = RunLogger(run_dir, tb, cadence)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        max_steps=max_steps,
        limit_train_batches=2,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
        logger=tb,
        callbacks=[
            run_logger,
            ImageSamples(n_samples=2, cadence=cadence),
            WeightHistograms(cadence),
            ModelGraph(patch_size=SIZE),
            LearningRateMonitor(log_momentum=True),
        ],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    trainer.fit(task, datamodule=TileData())
    if test:  # after fit, as landseg does: loggers and RunLogger were closed, they reopen
        trainer.test(task, datamodule=TileData(), verbose=False)
    return run_logger


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
    )
    return accumulator.Reload()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunLogger]:
    run_dir = tmp_path_factory.mktemp("output") / "exp" / "v1"
    return run_dir, fit(run_dir, make_task(run_dir.parent), test=True)


def test_tensorboard_runs_per_phase(trained: tuple[Path, RunLogger]) -> None:
    run_dir, _ = trained
    root = run_dir / "tensorboard"
    train, val, test = events(root / "train"), events(root / "val"), events(root / "test")
    assert list((root / "train").glob("events.out.tfevents.*"))
    assert list((root / "val").glob("events.out.tfevents.*"))
    # train_loss (epoch value) and val_loss overlay under one tag
    assert "loss" in train.Tags()["scalars"] and "loss" in val.Tags()["scalars"]
    assert len(val.Scalars("loss")) == 2  # two epochs, no sanity-check value
    assert "miou" in val.Tags()["scalars"]
    assert {"loss", "miou"} <= set(test.Tags()["scalars"])
    assert "confusion_test" in test.Tags()["images"]
    assert {"lr-SGD", "lr-SGD-momentum"} <= set(train.Tags()["scalars"])
    assert "samples/image_mask_prediction" in val.Tags()["images"]
    assert len(val.Images("samples/image_mask_prediction")) == 2
    assert "confusion_val" in val.Tags()["images"]
    network = make_task(run_dir).model  # the same architecture: the same parameter names
    names = {name.replace(".", "/") for name, _ in network.named_parameters()}
    assert set(train.Tags()["histograms"]) == names
    assert train.Tags()["graph"]
    assert "learning_curves" in train.Tags()["images"]
    session = events(root)  # config text and the HParams session at the root
    assert "config/text_summary" in session.Tags()["tensors"]


def test_scalars_and_images_of_one_validation_share_its_step(
    trained: tuple[Path, RunLogger],
) -> None:
    run_dir, _ = trained
    val = events(run_dir / "tensorboard" / "val")
    loss_steps = [event.step for event in val.Scalars("loss")]
    assert loss_steps == [1, 3]  # Lightning's step: the index of the epoch's last batch
    assert [event.step for event in val.Scalars("miou")] == loss_steps
    for tag in ("confusion_val", "per_class_val", "samples/image_mask_prediction"):
        assert [image.step for image in val.Images(tag)] == loss_steps, tag
    # the run's own rows count the training steps done, as history.json does
    assert [row["step"] for row in read_scalars(run_dir) if row["phase"] == "val"] == [2, 4]


def test_files_on_disk(trained: tuple[Path, RunLogger]) -> None:
    run_dir, run_logger = trained
    assert run_logger.closed
    for name in (
        "confusion_val",
        "confusion_normalized_val",
        "per_class_val",
        "confusion_test",
        "learning_curves",
    ):
        assert (run_dir / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    with np.load(run_dir / "arrays" / "confusion_val.npz") as saved:
        assert saved["values"].shape == (2, N_CLASSES, N_CLASSES)
        assert saved["steps"].tolist() == [2, 4]
        assert saved["values"].sum() > 0
    with np.load(run_dir / "arrays" / "confusion_test.npz") as saved:
        assert saved["values"].shape == (1, N_CLASSES, N_CLASSES)
    assert not list(run_dir.rglob(".*.tmp"))  # every atomic write completed
    rows = read_scalars(run_dir)
    assert [(r["phase"], r["epoch"]) for r in rows] == [
        ("val", 0),
        ("train", 0),
        ("val", 1),
        ("train", 1),
        ("test", 2),  # current_epoch after fit: epochs done
    ]
    assert {"loss", "lr"} <= rows[1].keys() and {"loss", "miou"} <= rows[0].keys()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_run_logger_closed_when_training_stops(tmp_path: Path, error: type[BaseException]) -> None:
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after an interrupt
    task = make_task(tmp_path, raise_at_step=2, error=error)
    expected = SystemExit if error is KeyboardInterrupt else RuntimeError
    try:
        with pytest.raises(expected):
            fit(tmp_path, task, epochs=3)
    finally:
        signal.signal(signal.SIGINT, handler)
    run_logger = next(c for c in task.trainer.callbacks if isinstance(c, RunLogger))
    assert run_logger.closed
    # epoch 0 finished before the error: its validation is on disk
    with np.load(tmp_path / "arrays" / "confusion_val.npz") as saved:
        assert saved["values"].shape == (1, N_CLASSES, N_CLASSES)
    assert [r["phase"] for r in read_scalars(tmp_path)] == ["val", "train"]


def test_pictures_follow_the_cadence_numbers_do_not(tmp_path: Path) -> None:
    # 3 epochs of 2 steps, stopped by max_steps (the cadence cannot know epoch 2 is the last):
    # every 5 epochs draws epoch 0, then the final state when fit ends
    task = make_task(tmp_path)
    fit(tmp_path, task, epochs=10, cadence=VisualCadence(every_n_epochs=5), max_steps=6)
    with np.load(tmp_path / "arrays" / "confusion_val.npz") as saved:
        assert saved["steps"].tolist() == [2, 4, 6]  # every validation
    assert [r["step"] for r in read_scalars(tmp_path) if r["phase"] == "val"] == [2, 4, 6]
    val, train = (
        events(tmp_path / "tensorboard" / "val"),
        events(tmp_path / "tensorboard" / "train"),
    )
    # in TensorBoard, beside the scalars of the same validation (Lightning's step: 1, 3, 5)
    assert [s.step for s in val.Scalars("loss")] == [1, 3, 5]
    assert [i.step for i in val.Images("confusion_val")] == [1, 5]
    assert [i.step for i in val.Images("per_class_val")] == [1, 5]
    assert [i.step for i in val.Images("samples/image_mask_prediction")] == [1, 5]
    first = next(name for name, _ in task.model.named_parameters()).replace(".", "/")
    assert [h.step for h in train.Histograms(first)] == [1, 5]
