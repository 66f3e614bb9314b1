"""Lightning datamodules, by name; ``csv`` reads ODEON's CSV files of image/mask rows.

Splits: ``train_file``; ``val_file``, or else ``percentage_val`` of the train file held out
reproducibly from ``train_setup.random_seed``; ``test_file`` (also used for prediction).
``train_setup.testing: true`` keeps the first 8 pairs of every split, after the split
(:data:`~landseg.data.csvfiles.TESTING_SUBSET`). Augmentations apply to the train split only.

Every dataloader uses a :class:`~landseg.data.sampler.SeededSampler` (shuffled for train
only), which shards itself across distributed ranks: the Trainer must run with
``use_distributed_sampler=False``. Randomness is per sample, so no seeding ``worker_init_fn``
is needed; the workers' one (:func:`ignore_stop_signals`) leaves stop signals to the main
process.
The train loader is a :class:`~landseg.data.resumable.ResumableDataLoader`, whose state
(epoch, batches done) Lightning checkpoints, so a resumed epoch skips what was trained.

The decoded-tile caches (``data_source.cache``, :mod:`landseg.data.cache`) are set up when the
first loader is built, in the training process and before its workers start (a memory cache
must be, to outlive the workers of one epoch); the datasets alone (a report's sample tiles)
get none.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from landseg.config.schema import LandsegConfig
from landseg.core.errors import DataError
from landseg.core.registry import Registry
from landseg.data.cache import build_caches
from landseg.data.csvfiles import SamplePair, load_splits
from landseg.data.dataset import SegmentationDataset
from landseg.data.resumable import ResumableDataLoader
from landseg.data.sampler import SeededSampler
from landseg.data.scenes import SceneDataset, label_settings, scene_dataset
from landseg.data.summary import DataSummary
from landseg.data.transport import BatchScaler, compact_eligible, is_compact
from landseg.data.workers import SignalSafeDataLoader, ignore_stop_signals

DATAMODULES: Registry[type[L.LightningDataModule]] = Registry("datamodule")


@DATAMODULES.register("csv")
class CsvSegmentationDataModule(L.LightningDataModule):
    """Train/val/test datasets from the config's CSV files, shaped by the checked summary."""

    def __init__(self, config: LandsegConfig, summary: DataSummary):
        super().__init__()
        self.config = config
        self.summary = summary
        self.datasets: dict[str, SegmentationDataset] = {}
        self.samplers: dict[str, SeededSampler] = {}
        self.caches_built = False
        self.loaders: list[SignalSafeDataLoader] = []
        self.scalers: dict[str, BatchScaler] = {}
        #: Send uint8 batches from the workers, scaled after the transfer: set by the run
        #: (landseg.data.transport.compact_for: on a GPU, and on the CPU while
        #: COMPACT_ON_CPU); off for loaders built outside a run.
        self.compact_transport = False

    # ------------------------------------------------------------------ building

    def setup(self, stage: str | None = None) -> None:
        """Read the CSV files and build every split once (later calls are no-ops)."""
        if self.datasets:
            return
        for split, pairs in self.load_pairs().items():
            self.datasets[split] = self._dataset(split, pairs)
            self.samplers[split] = SeededSampler(
                len(self.datasets[split]),
                seed=self.config.train_setup.random_seed,
                shuffle=split == "train",
                pad=split == "train",
            )

    def load_pairs(self) -> dict[str, list[SamplePair]]:
        source, train = self.config.data_source, self.config.train_setup
        return load_splits(
            source.train_file,
            source.val_file,
            source.test_file,
            percentage_val=source.percentage_val,
            seed=train.random_seed,
            testing=train.testing,
        )

    def _dataset(self, split: str, pairs: list[SamplePair]) -> SegmentationDataset:
        source = self.config.data_source
        weights = source.normalization_weights
        augmentation = source.data_augmentation
        options: dict[str, Any] = {
            "image_bands": source.image_bands,
            "mask_bands": source.mask_bands,
            "n_classes": self.summary.n_classes,
            "pixel_range": self.summary.pixel_range,
            "stats": weights.for_split(split) if weights else None,
            "augmentations": getattr(augmentation, split) if augmentation else (),
            "seed": self.config.train_setup.random_seed,
            "ignore_index": source.ignore_index,
        }
        windows = source.windows
        if windows is None:
            return SegmentationDataset(pairs, **options)
        # scene rows (landseg.data.scenes): random windows to train, a fixed grid otherwise
        return scene_dataset(
            pairs,
            size=windows.size,
            stride=windows.step,
            samples_per_epoch=windows.samples_per_epoch if split == "train" else None,
            max_nodata=windows.max_nodata,
            settings=label_settings(self.config, self.summary),
            **options,
        )

    # ------------------------------------------------------------------ loaders

    @property
    def train_sampler(self) -> SeededSampler:
        """The train sampler, for ``skip_next`` when resuming mid-epoch."""
        self.setup()
        return self.samplers["train"]

    @property
    def train_dataset(self) -> SegmentationDataset:
        return self._split("train")

    @property
    def val_dataset(self) -> SegmentationDataset:
        return self._split("val")

    @property
    def test_dataset(self) -> SegmentationDataset:
        return self._split("test")

    def _split(self, split: str) -> SegmentationDataset:
        self.setup()
        if split not in self.datasets:
            raise DataError(f"data_source.{split}_file is not set: there is no {split} split")
        return self.datasets[split]

    def build_caches(self) -> None:
        """Give each split its cache (once); ConfigError when a memory cache does not fit."""
        self.setup()
        if self.caches_built:
            return
        sizes = {  # random windows are new every time: nothing to cache
            split: len(dataset)
            for split, dataset in self.datasets.items()
            if not (isinstance(dataset, SceneDataset) and dataset.random is not None)
        }
        for split, cache in build_caches(self.config, self.summary, sizes).items():
            self.datasets[split].cache = cache
        self.caches_built = True

    def _loader(self, split: str) -> DataLoader[dict[str, Any]]:
        dataset = self._split(split)
        self.build_caches()
        workers = self.config.device_setup.num_workers
        if (
            self.compact_transport
            and split in ("train", "val")
            and compact_eligible(self.summary.image_dtype, dataset.augmentation_names, workers)
        ):
            dataset = copy.copy(dataset)  # the shared dataset (report tiles) stays plain
            dataset.compact = True
        # the train loader keeps its place in the epoch across a resume (ResumeTracker)
        loader_class = ResumableDataLoader if split == "train" else SignalSafeDataLoader
        loader = loader_class(
            dataset,
            batch_size=self.config.train_setup.batch_size,
            sampler=self.samplers[split],
            num_workers=workers,
            # the train and val workers live for the whole fit: starting them every epoch
            # cost more than a cached epoch's reading. Safe because a sample is a pure
            # function of the (index, seed) key the sampler sends from this process; a
            # stopped run ends them (shutdown_workers)
            persistent_workers=workers > 0 and split in ("train", "val"),
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=ignore_stop_signals,
        )
        self.loaders.append(loader)
        return loader

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Scale a compact batch on its device (:mod:`landseg.data.transport`): the train
        loader's while training, the val loader's otherwise (only they send compact ones)."""
        if not is_compact(batch):
            return batch
        trainer = getattr(self, "trainer", None)
        training = trainer is not None and trainer.training
        return self.scaler("train" if training else "val")(batch)

    def scaler(self, split: str) -> BatchScaler:
        """Compact batch of ``split``'s loader -> the plain batch its dataset would give."""
        if split not in self.scalers:
            dataset = self._split(split)
            pixel_range = dataset.pixel_range
            assert isinstance(pixel_range, float | int), "compact batches: uint8 images only"
            self.scalers[split] = BatchScaler(pixel_range, dataset.stats)
        return self.scalers[split]

    def shutdown_workers(self) -> None:
        """End the DataLoader workers of every loader this module made (a run that stops)."""
        for loader in self.loaders:
            loader.shutdown_workers()

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("test")
