"""Compact batches (uint8 images, int16 masks from the workers, scaled on the device) are bit for
bit the plain batches, and are used only where that holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from landseg.cli.main import main
from landseg.config.schema import SplitStats
from landseg.data import transport
from landseg.data.cache import mask_dtype
from landseg.data.checks import check_data
from landseg.data.datamodule import CsvSegmentationDataModule
from landseg.data.normalization import scale, standardize
from landseg.data.transport import BatchScaler, compact_for
from tests.helpers import write_config

STATS = {"mean": [0.45, 0.5, 0.55], "std": [0.21, 0.2, 0.19]}


def _module(make_dataset, make_config, tmp_path: Path, **data_source) -> CsvSegmentationDataModule:
    workers = data_source.pop("workers", 2)
    config = make_config(
        make_dataset(tmp_path, n=9, size=16, nodata=255),
        tmp_path,
        percentage_val=0.34,
        device_setup={"num_workers": workers},
        normalization_weights={"train": STATS, "val": STATS},
        **data_source,
    )
    config.output_setup.output_folder.mkdir(exist_ok=True)
    module = CsvSegmentationDataModule(config, check_data(config))
    module.compact_transport = True  # what a run sets (compact_for)
    module.setup("fit")
    return module


@pytest.mark.parametrize("augment", [[], ["rotation90"]])
def test_compact_batches_scale_to_the_plain_batches_bit_for_bit(
    augment: list[str], make_dataset, make_config, tmp_path: Path
) -> None:
    module = _module(make_dataset, make_config, tmp_path, data_augmentation={"train": augment})
    for split in ("train", "val"):
        loader = getattr(module, f"{split}_dataloader")()
        plain = module.datasets[split]
        sampler = module.samplers[split]
        sampler.set_epoch(1)
        batches = list(loader)
        assert batches and all(b["image"].dtype == torch.uint8 for b in batches)
        assert all(b["mask"].dtype == torch.int8 for b in batches)  # 6 classes
        scaled = [module.scaler(split)(b) for b in batches]
        reference = [plain[key] for key in sampler]
        images = torch.cat([b["image"] for b in scaled])
        masks = torch.cat([b["mask"] for b in scaled])
        assert images.dtype == torch.float32 and masks.dtype == torch.int64
        assert torch.equal(images, torch.stack([r["image"] for r in reference]))
        assert torch.equal(masks, torch.stack([r["mask"] for r in reference]))
        assert (masks == -1).any()  # the nodata row stays ignored through int16
        assert not plain.compact  # the shared dataset (report tiles) stays plain
    module.shutdown_workers()


@pytest.mark.parametrize("stats", [None, SplitStats(**STATS)])
@pytest.mark.parametrize("pixel_range", [255.0, 200.0, 1.0])
def test_scaling_in_the_training_process_is_the_datasets_bit_for_bit(
    stats: SplitStats | None, pixel_range: float
) -> None:
    """On the CPU (where a CPU run scales its compact batches), every uint8 value of every band
    scales and standardises to the very float32 the dataset makes, and int8 classes (with the
    ignored -1) become the int64 mask the loss takes."""
    values = torch.arange(256, dtype=torch.uint8).reshape(2, 1, 8, 16)
    raw = torch.cat([values, values.flip(-1), values.roll(5, -1)], dim=1)  # (2, 3, 8, 16)
    mask = torch.arange(-1, 127, dtype=torch.int8).reshape(1, 8, 16).expand(2, 8, 16)
    batch = BatchScaler(pixel_range, stats)({"image": raw, "mask": mask, "index": [0, 1]})
    expected = np.stack([standardize(scale(tile.numpy(), pixel_range), stats) for tile in raw])
    assert batch["image"].dtype == torch.float32
    assert torch.equal(batch["image"], torch.from_numpy(expected))
    assert batch["mask"].dtype == torch.int64
    assert torch.equal(batch["mask"], mask.to(torch.int64))


@pytest.mark.parametrize(("classes", "kind"), [(6, np.int8), (127, np.int8), (128, np.int16)])
def test_compact_classes_take_the_smallest_type_that_holds_them_and_the_ignored(
    classes: int, kind: type
) -> None:
    """int8 holds -1 and classes 0-126; 128 classes need int16."""
    assert mask_dtype(classes) == kind


def test_runs_on_the_cpu_and_on_a_gpu_send_compact_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compact_for(on_gpu=False) and compact_for(on_gpu=True)
    monkeypatch.setattr(transport, "COMPACT_ON_CPU", False)  # the switch: a GPU keeps them
    assert not compact_for(on_gpu=False) and compact_for(on_gpu=True)


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"workers": 0}, "no workers: nothing is transferred"),
        ({"data_augmentation": {"train": ["radiometry"]}}, "float arithmetic on pixels"),
        ({"data_augmentation": {"train": ["rotation"]}}, "resampling"),
    ],
)
def test_plain_batches_where_compact_would_change_them(
    settings: dict, why: str, make_dataset, make_config, tmp_path: Path
) -> None:
    module = _module(make_dataset, make_config, tmp_path, **settings)
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].dtype == torch.float32, why
    assert module.on_after_batch_transfer(batch, 0) is batch
    module.shutdown_workers()


def test_other_dtypes_stay_plain(make_dataset, make_config, tmp_path: Path) -> None:
    config = make_config(
        make_dataset(tmp_path, n=6, size=16, dtype="uint16"),
        tmp_path,
        pixel_range=4095,
        device_setup={"num_workers": 2},
    )
    config.output_setup.output_folder.mkdir(exist_ok=True)
    module = CsvSegmentationDataModule(config, check_data(config))
    module.compact_transport = True
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].dtype == torch.float32
    module.shutdown_workers()


@pytest.mark.slow
def test_training_with_compact_workers_equals_training_without_workers(
    demo_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on the CPU: 2 loader workers sending compact batches (rotation90 on the train
    split; a CPU run turns them on, COMPACT_ON_CPU) train and validate exactly as the plain
    batches of a run without workers, scaled by Lightning's on_after_batch_transfer in the
    training process."""
    seen: list[torch.dtype] = []
    original = CsvSegmentationDataModule.on_after_batch_transfer

    def recording(self: CsvSegmentationDataModule, batch, dataloader_idx: int):
        seen.append(batch["image"].dtype)
        return original(self, batch, dataloader_idx)

    monkeypatch.setattr(CsvSegmentationDataModule, "on_after_batch_transfer", recording)
    demo_config["train_setup"].update(epochs=2, batch_size=4, deterministic=True)
    demo_config["output_setup"].update(
        name_exp_log="exp",
        use_tensorboard=False,
        get_prediction=False,  # histories compared
    )
    demo_config["data_source"]["data_augmentation"] = {"train": ["rotation90"]}
    histories = []
    for workers in (0, 2):
        demo_config["device_setup"]["num_workers"] = workers
        demo_config["output_setup"]["version_name"] = f"workers{workers}"
        path = write_config(tmp_path / f"w{workers}.json", demo_config)
        assert main(["train", "-c", str(path)]) == 0
        run = tmp_path / "runs" / "exp" / f"workers{workers}"
        histories.append(
            [json.loads((run / name).read_text()) for name in ("history.json", "history_test.json")]
        )
    assert histories[0] == histories[1]
    assert torch.uint8 in seen and torch.float32 in seen  # compact with workers, plain without
