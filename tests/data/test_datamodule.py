"""The csv datamodule: splits, augmentation on train only, loaders, pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from landseg.core.errors import DataError
from landseg.data.checks import check_data
from landseg.data.datamodule import DATAMODULES, CsvSegmentationDataModule


def _module(config) -> CsvSegmentationDataModule:
    module = DATAMODULES.get("csv")(config, check_data(config))
    module.setup("fit")
    return module


def test_percentage_val_split_and_train_only_augmentation(
    tmp_path: Path, make_dataset, make_config
) -> None:
    config = make_config(
        make_dataset(tmp_path, n=10, size=16),
        tmp_path,
        percentage_val=0.2,
        data_augmentation={"train": ["rotation90", "radiometry"]},
        normalization_weights={"train": {"mean": [0.5] * 3, "std": [0.2] * 3}},
    )
    module = _module(config)
    assert {k: len(v) for k, v in module.datasets.items()} == {"train": 8, "val": 2}
    assert module.datasets["train"].augmentation_names == ["rotation90", "radiometry"]
    assert module.datasets["val"].augmentation_names == []
    assert module.datasets["val"].stats is config.data_source.normalization_weights.train
    assert module.train_sampler.shuffle and not module.samplers["val"].shuffle
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].dtype == torch.int64
    assert len(module.val_dataloader()) == 1
    with pytest.raises(DataError, match=r"data_source\.test_file is not set"):
        module.test_dataloader()


def test_val_and_test_files_and_testing_subset(tmp_path: Path, make_dataset, make_config) -> None:
    train = make_dataset(tmp_path, n=10, size=8, name="train")
    val = make_dataset(tmp_path, n=3, size=8, name="val")
    test = make_dataset(tmp_path, n=9, size=8, name="test")
    config = make_config(
        train, tmp_path, val_file=val, test_file=test, train_setup={"testing": True}
    )
    module = _module(config)
    sizes = {k: len(v) for k, v in module.datasets.items()}
    assert sizes == {"train": 8, "val": 3, "test": 8}
    assert check_data(config).split_sizes == sizes
    predicted = [i for batch in module.predict_dataloader() for i in batch["index"].tolist()]
    assert predicted == list(range(8))


def test_pickles_for_workers_and_spawn(tmp_path: Path, make_dataset, make_config) -> None:
    config = make_config(
        make_dataset(tmp_path, n=6, size=8),
        tmp_path,
        data_augmentation={"train": ["rotation"]},
        device_setup={"num_workers": 2},
    )
    module = _module(config)
    module.train_sampler.set_epoch(1)
    clone = pickle.loads(pickle.dumps(module))
    assert clone.train_sampler.epoch == 1
    loader = module.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers  # started once per fit
    batches = [b["index"].tolist() for b in loader]
    assert sorted(i for b in batches for i in b) == sorted(
        i for b in clone.train_dataloader() for i in b["index"].tolist()
    )


def test_train_loader_resumes_mid_epoch(tmp_path: Path, make_dataset, make_config) -> None:
    config = make_config(make_dataset(tmp_path, n=6, size=8), tmp_path)
    module = _module(config)
    assert module.train_dataset is module.datasets["train"]
    module.train_sampler.set_epoch(2)
    full = [b["index"].tolist() for b in module.train_dataloader()]
    loader = module.train_dataloader()
    loader.load_state_dict({"epoch": 2, "batches_done": 1})
    assert [b["index"].tolist() for b in loader] == full[1:]


class _SignalDispositions(torch.utils.data.Dataset):
    """Returns, from inside the worker, how it handles each stop signal."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> list[str]:
        import signal

        def disposition(signum: int) -> str:
            handler = signal.getsignal(signum)
            return getattr(handler, "__name__", None) or signal.Handlers(handler).name

        return [disposition(s) for s in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM)]


def test_loader_workers_leave_stop_signals_to_the_main_process(
    tmp_path: Path, make_dataset, make_config
) -> None:

    from landseg.data.datamodule import ignore_stop_signals

    config = make_config(make_dataset(tmp_path, n=6, size=16), tmp_path)
    datamodule = CsvSegmentationDataModule(config, check_data(config))
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert loader.worker_init_fn is ignore_stop_signals
    loader = torch.utils.data.DataLoader(
        _SignalDispositions(), num_workers=1, worker_init_fn=ignore_stop_signals
    )
    (dispositions,) = list(loader)
    # the first SIGTERM is survived (the cluster's); a second one ends the worker
    assert [d[0] for d in dispositions] == ["SIG_IGN", "SIG_IGN", "_worker_sigterm"]
