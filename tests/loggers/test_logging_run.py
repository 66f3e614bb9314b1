"""The logger layer inside a real (tiny) Lightning training: what a user finds on disk.

A 1x1-convolution model on random 16 x 16 tiles, 2 epochs of 2 batches on CPU.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from landseg.callbacks.cadence import VisualCadence
from landseg.callbacks.images import ImageSamples
from landseg.callbacks.weights import ModelGraph, WeightHistograms
from landseg.loggers import PhaseTensorBoardLogger, RunLogger, read_scalars
from landseg.tasks.metrics import metrics_from_confusion, miou

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


class FakeTask(pl.LightningModule):
    """The interface of landseg's SegmentationTask that the loggers rely on."""

    def __init__(self, raise_at_step: int | None = None, error: type[BaseException] = RuntimeError):
        super().__init__()
        self.save_hyperparameters({"in_channels": BANDS, "config": {"train_setup": {"lr": 0.1}}})
        self.model = torch.nn.Conv2d(BANDS, N_CLASSES, kernel_size=1)
        self.class_labels = [f"class{i}" for i in range(N_CLASSES)]
        self.last_confusion: np.ndarray | None = None
        self.last_report: dict[str, Any] | None = None
        self.raise_at_step = raise_at_step
        self.error = error
        self._confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.raise_at_step:
            raise self.error("stop at step 2")
        loss = F.cross_entropy(self.model(batch["image"]), batch["mask"], ignore_index=-1)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def _evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits = self.model(batch["image"])
        self.log(f"{stage}_loss", F.cross_entropy(logits, batch["mask"], ignore_index=-1))
        keep = batch["mask"] >= 0
        pairs = batch["mask"][keep] * N_CLASSES + logits.argmax(1)[keep]
        counts = np.bincount(pairs.numpy(), minlength=N_CLASSES**2)
        self._confusion += counts.reshape(N_CLASSES, N_CLASSES)

    def _evaluation_epoch_end(self, stage: str) -> None:
        confusion, self._confusion = self._confusion, np.zeros_like(self._confusion)
        self.log(f"{stage}_miou", miou(confusion))
        self.last_confusion = confusion
        self.last_report = metrics_from_confusion(confusion, self.class_labels)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def fit(
    run_dir: Path,
    task: FakeTask,
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
    return run_dir, fit(run_dir, FakeTask(), test=True)


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
    assert {"weight", "bias"} <= set(train.Tags()["histograms"])
    assert train.Tags()["graph"]
    assert "learning_curves" in train.Tags()["images"]
    session = events(root)  # config text and the HParams session at the root
    assert "config/text_summary" in session.Tags()["tensors"]


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
    task = FakeTask(raise_at_step=2, error=error)
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
    fit(tmp_path, FakeTask(), epochs=10, cadence=VisualCadence(every_n_epochs=5), max_steps=6)
    with np.load(tmp_path / "arrays" / "confusion_val.npz") as saved:
        assert saved["steps"].tolist() == [2, 4, 6]  # every validation
    assert [r["step"] for r in read_scalars(tmp_path) if r["phase"] == "val"] == [2, 4, 6]
    val, train = (
        events(tmp_path / "tensorboard" / "val"),
        events(tmp_path / "tensorboard" / "train"),
    )
    assert [i.step for i in val.Images("confusion_val")] == [2, 6]
    assert [i.step for i in val.Images("per_class_val")] == [2, 6]
    assert [i.step for i in val.Images("samples/image_mask_prediction")] == [2, 6]
    assert [h.step for h in train.Histograms("weight")] == [2, 6]
