"""data_source.cache: decoded tiles read back bit for bit, redone when a raster changes, whole
after any kill, shared by workers and processes, bounded, refused when memory is short."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from landseg.config.continuation import continuation_problems
from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError
from landseg.core.files import write_geotiff
from landseg.data.cache import (
    HEADER_SIZE,
    MAGIC,
    USAGE_FILE,
    DiskCache,
    MemoryCache,
    build_caches,
    mask_dtype,
)
from landseg.data.checks import check_data
from landseg.data.csvfiles import SamplePair, read_pairs
from landseg.data.datamodule import CsvSegmentationDataModule
from landseg.data.dataset import SegmentationDataset
from landseg.data.sampler import derive_seed
from tests.helpers import final_state, write_config

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

SETTINGS = {"image_bands": None, "mask_bands": None, "n_classes": 3, "ignore_index": None}


def _dataset(csv_path: Path, **kwargs: Any) -> SegmentationDataset:
    options = {"image_bands": None, "mask_bands": None, "n_classes": 3, "pixel_range": 255.0}
    return SegmentationDataset(read_pairs(csv_path), **(options | kwargs))


def _disk(folder: Path, limit: float = 1e9) -> DiskCache:
    cache = DiskCache(folder, int(limit), SETTINGS, n_classes=3)
    cache.setup()
    return cache


def _memory(dataset: SegmentationDataset, size: int = 32) -> MemoryCache:
    return MemoryCache(len(dataset), ((3, size, size), "uint8"), ((size, size), mask_dtype(3)))


def _count_decodes(dataset: SegmentationDataset) -> list[SamplePair]:
    """Record every decode of ``dataset`` (in this process) in the returned list."""
    decoded: list[SamplePair] = []
    decode = dataset.decode

    def counting(pair: SamplePair) -> tuple[np.ndarray, np.ndarray]:
        decoded.append(pair)
        return decode(pair)

    dataset.decode = counting  # type: ignore[method-assign]
    return decoded


def _refuse_decoding(pair: SamplePair) -> tuple[np.ndarray, np.ndarray]:
    raise AssertionError(f"{pair.image} decoded again")


def _epoch(dataset: SegmentationDataset, epoch: int) -> list[dict[str, Any]]:
    return [dataset[(i, derive_seed(0, epoch, i))] for i in range(len(dataset))]


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        for x, y in zip(a, b, strict=True)
    )


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tile"))


# ---------------------------------------------------------------------------- reading back


@pytest.mark.parametrize(
    ("kind", "mask", "dtype", "nodata"),
    [
        ("disk", "onehot", "uint8", 0),
        ("disk", "index", "uint16", 2),
        ("disk", "index", "float32", None),
        ("memory", "onehot", "uint8", 0),
    ],
)
def test_later_epochs_read_the_decoded_tiles_bit_for_bit(
    kind: str, mask: str, dtype: str, nodata: int | None, tmp_path: Path, make_dataset
) -> None:
    csv_path = make_dataset(tmp_path, n=4, mask=mask, dtype=dtype, nodata=nodata)
    options = {
        "augmentations": ["rotation90", "radiometry"],
        "pixel_range": {"uint8": 255.0, "uint16": 4095.0, "float32": 1.0}[dtype],
    }
    plain, cached = _dataset(csv_path, **options), _dataset(csv_path, **options)
    cached.cache = _disk(tmp_path / "cache") if kind == "disk" else _memory(cached)
    decoded = _count_decodes(cached)
    for epoch in (0, 1, 2):  # augmentations still differ per epoch: they run after the cache
        assert _same(_epoch(cached, epoch), _epoch(plain, epoch))
    assert decoded == cached.pairs  # each tile once, in the first epoch
    assert not _same(_epoch(cached, 1), _epoch(cached, 2))


def test_a_disk_entry_is_a_header_and_the_arrays(tmp_path: Path, make_dataset) -> None:
    dataset = _dataset(make_dataset(tmp_path, n=3))
    cache = dataset.cache = _disk(tmp_path / "cache")
    _epoch(dataset, 0)
    entries = _entries(tmp_path / "cache")
    assert entries == sorted(cache.path(pair) for pair in dataset.pairs)
    size = HEADER_SIZE + 3 * 32 * 32 + 32 * 32  # uint8 image, int8 mask
    assert [p.stat().st_size for p in entries] == [size] * 3
    assert int((tmp_path / "cache" / USAGE_FILE).read_text()) == 3 * size
    head = entries[0].read_bytes()[:HEADER_SIZE]
    header = json.loads(head[len(MAGIC) :])
    assert head.startswith(MAGIC) and set(header) == {"sources", "image", "mask", "crc32"}
    assert header["image"] == ["|u1", [3, 32, 32]] and header["mask"] == ["|i1", [32, 32]]
    assert "landseg" in (tmp_path / "cache" / "README.txt").read_text()


# ---------------------------------------------------------------------------- invalidation


def _rewrite(path: Path, value: int) -> None:
    """The image at ``path`` rewritten uncompressed with every pixel ``value``."""
    write_geotiff(path, np.full((3, 32, 32), value, np.uint8), compress=None)


def test_a_changed_raster_is_decoded_again(tmp_path: Path, make_dataset) -> None:
    dataset = _dataset(make_dataset(tmp_path, n=2))
    dataset.cache = _disk(tmp_path / "cache")
    image = dataset.pairs[0].image
    _rewrite(image, 10)
    decoded = _count_decodes(dataset)
    assert int(dataset[0]["image"].max() * 255) == 10 and len(decoded) == 1

    # same size and inode, new pixels and a new mtime (an edit in place)
    before = os.stat(image)
    with open(image, "r+b") as handle:
        data = handle.read()
        handle.seek(0)
        edited = data.replace(bytes([10]) * 1024, bytes([20]) * 1024)
        assert edited != data and len(edited) == len(data)
        handle.write(edited)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert os.stat(image).st_size == before.st_size and os.stat(image).st_ino == before.st_ino
    assert int(dataset[0]["image"].max() * 255) == 20 and len(decoded) == 2

    # replaced by another file (a new size and inode)
    write_geotiff(image.with_name("new.tif"), np.full((3, 32, 32), 30, np.uint8))  # deflate
    os.replace(image.with_name("new.tif"), image)
    assert os.stat(image).st_size != before.st_size
    assert int(dataset[0]["image"].max() * 255) == 30 and len(decoded) == 3
    assert int(dataset[0]["image"].max() * 255) == 30 and len(decoded) == 3  # cached again
    assert len(_entries(tmp_path / "cache")) == 1  # replaced, not added


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "foreign file", "empty"])
def test_a_torn_or_foreign_entry_is_never_returned(
    damage: str, tmp_path: Path, make_dataset
) -> None:
    dataset = _dataset(make_dataset(tmp_path, n=1))
    reference = _epoch(dataset, 0)
    dataset.cache = _disk(tmp_path / "cache")
    _epoch(dataset, 0)
    (entry,) = _entries(tmp_path / "cache")
    data = entry.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "flipped byte": data[:-1] + bytes([data[-1] ^ 1]),
        "foreign file": b"II*\x00" + data[4:],
        "empty": b"",
    }[damage]
    entry.write_bytes(damaged)
    decoded = _count_decodes(dataset)
    assert _same(_epoch(dataset, 0), reference) and len(decoded) == 1
    assert entry.read_bytes() == data  # rewritten whole
    assert _same(_epoch(dataset, 0), reference) and len(decoded) == 1


def test_setup_removes_killed_writers_leftovers_and_recounts(tmp_path: Path, make_dataset) -> None:
    dataset = _dataset(make_dataset(tmp_path, n=2))
    cache = dataset.cache = _disk(tmp_path / "cache")
    _epoch(dataset, 0)
    entry = _entries(tmp_path / "cache")[0]
    stale = entry.parent / f".{entry.name}.k1ll3d.tmp"  # as a kill mid-write leaves it
    live = entry.parent / f".{entry.name}.wr1t1ng.tmp"  # another process writing now
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x" * 10)
    os.utime(stale, (0, 0))
    (tmp_path / "cache" / USAGE_FILE).write_text("garbage")
    assert cache.setup() == entry.stat().st_size * 2 + 10
    assert not stale.exists() and live.exists()


# ---------------------------------------------------------------------------- bounds


def test_the_disk_cache_stops_at_its_limit(tmp_path: Path, make_dataset) -> None:
    dataset = _dataset(make_dataset(tmp_path, n=5))
    reference = _epoch(dataset, 0)
    entry = HEADER_SIZE + 4 * 32 * 32
    cache = dataset.cache = _disk(tmp_path / "cache", limit=2.5 * entry)
    decoded = _count_decodes(dataset)
    assert _same(_epoch(dataset, 0), reference) and _same(_epoch(dataset, 0), reference)
    assert len(_entries(tmp_path / "cache")) == 2
    assert int((tmp_path / "cache" / USAGE_FILE).read_text()) == 2 * entry
    assert len(decoded) == 5 + 3  # the three left out are decoded every time
    assert cache.stopped == (
        f"{tmp_path / 'cache'} holds 9.2 kB, the limit (data_source.cache_limit_gb) is "
        "11.5 kB; the tiles left out are decoded every time"
    )


def test_the_disk_cache_leaves_a_tenth_of_the_disk_free(
    tmp_path: Path, make_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk of 100 entries' size with 12.5 free: two entries fit above the 10 % kept free,
    the third would go below; the tiles left out are decoded every time, results unchanged."""
    from types import SimpleNamespace

    dataset = _dataset(make_dataset(tmp_path, n=5))
    reference = _epoch(dataset, 0)
    entry = HEADER_SIZE + 4 * 32 * 32
    folder = tmp_path / "cache"

    def statvfs(path: Any) -> SimpleNamespace:
        assert Path(path) == folder
        used = sum(p.stat().st_size for p in _entries(folder))  # the disk fills as it writes
        return SimpleNamespace(f_frsize=1, f_blocks=100 * entry, f_bavail=12.5 * entry - used)

    monkeypatch.setattr(os, "statvfs", statvfs)
    cache = dataset.cache = _disk(folder)
    decoded = _count_decodes(dataset)
    assert _same(_epoch(dataset, 0), reference) and _same(_epoch(dataset, 0), reference)
    assert len(_entries(folder)) == 2
    assert len(decoded) == 5 + 3
    assert cache.stopped == (
        f"the disk of {folder} has less than 10% free; the tiles left out are decoded every time"
    )


def test_deleting_the_cache_between_epochs_is_safe(tmp_path: Path, make_dataset) -> None:
    """Documented as always safe, even during a run: the next epochs decode the tiles again
    and read the same samples; a later run fills a new cache."""
    dataset = _dataset(make_dataset(tmp_path, n=5))
    reference = [_epoch(dataset, epoch) for epoch in range(3)]
    folder = tmp_path / "cache"
    dataset.cache = _disk(folder)
    decoded = _count_decodes(dataset)
    assert _same(_epoch(dataset, 0), reference[0])
    assert len(_entries(folder)) == 5
    shutil.rmtree(folder)
    assert _same(_epoch(dataset, 1), reference[1]) and _same(_epoch(dataset, 2), reference[2])
    assert len(decoded) >= 10 and set(decoded[5:10]) == set(decoded[:5])  # decoded again

    dataset.cache = _disk(folder)  # the next run (or training process)
    assert _same(_epoch(dataset, 0), reference[0])
    assert len(_entries(folder)) == 5


def test_memory_cache_refuses_what_does_not_fit(
    tmp_path: Path, make_dataset, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(
        make_dataset(tmp_path, n=10),
        tmp_path,
        percentage_val=0.2,
        cache="memory",
        cache_limit_gb=0.00004,
    )
    module = CsvSegmentationDataModule(config, check_data(config))
    row = 3 * 32 * 32 + 32 * 32 + 1
    assert 10 * row == 40970
    monkeypatch.setattr("landseg.data.cache.available_memory", lambda: 10**12)
    with pytest.raises(ConfigError) as error:
        module.train_dataloader()
    assert str(error.value) == (
        "data_source.cache: memory needs 41.0 kB for the decoded train and val tiles but "
        "40.0 kB fit (cache_limit_gb: 4e-05, half of the 1000.00 GB available); use cache: "
        "disk, a larger cache_limit_gb, or cache: none"
    )
    monkeypatch.setattr("landseg.data.cache.available_memory", lambda: 60_000)
    config.data_source.cache_limit_gb = 1.0
    config.device_setup.accelerator = "cpu"
    config.device_setup.num_processes = 2  # two ranks on this machine: two copies
    with pytest.raises(ConfigError, match=r"needs 81\.9 kB .* of 2 training processes but "):
        CsvSegmentationDataModule(config, check_data(config)).train_dataloader()
    monkeypatch.setattr("landseg.data.cache.available_memory", lambda: 200_000)
    module = CsvSegmentationDataModule(config, check_data(config))
    module.train_dataloader()
    assert {s: type(d.cache).__name__ for s, d in module.datasets.items()} == {
        "train": "MemoryCache",
        "val": "MemoryCache",
    }


def test_the_default_disk_cache_needs_the_output_folder(
    tmp_path: Path, make_dataset, make_config
) -> None:
    """A report on another machine builds datasets, never a cache folder in a stranger path."""
    config = make_config(make_dataset(tmp_path, n=4), tmp_path)
    summary = check_data(config)
    assert config.data_source.cache == "disk"
    assert build_caches(config, summary, {"train": 3, "val": 1}) == {}
    assert not (tmp_path / "out").exists()
    config.output_setup.output_folder.mkdir()
    caches = build_caches(config, summary, {"train": 3, "val": 1})
    assert set(caches) == {"train", "val"}
    assert (tmp_path / "out" / ".landseg-cache" / USAGE_FILE).is_file()
    config.data_source.cache_dir = tmp_path / "elsewhere" / "cache"
    cache = build_caches(config, summary, {"train": 3})["train"]
    assert isinstance(cache, DiskCache) and cache.folder == tmp_path / "elsewhere" / "cache"
    assert (cache.folder / USAGE_FILE).is_file()
    config.data_source.cache = "none"
    assert build_caches(config, summary, {"train": 3}) == {}


# ---------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_two_loader_workers_fill_the_cache_that_later_epochs_read(
    kind: str, tmp_path: Path, make_dataset, make_config
) -> None:
    config = make_config(
        make_dataset(tmp_path, n=12, size=16),
        tmp_path,
        percentage_val=0.25,
        cache=kind,
        data_augmentation={"train": ["rotation90", "radiometry"]},
        device_setup={"num_workers": 2},
    )
    config.output_setup.output_folder.mkdir()
    plain = CsvSegmentationDataModule(config, check_data(config))
    plain.setup()
    module = CsvSegmentationDataModule(config, check_data(config))
    loader = module.train_dataloader()
    dataset = module.train_dataset
    assert loader.num_workers == 2 and loader.persistent_workers
    for epoch in (0, 1):
        module.train_sampler.set_epoch(epoch)
        batches = list(loader)
        reference = [plain.train_dataset[key] for key in module.train_sampler]
        images = torch.cat([b["image"] for b in batches])
        assert torch.equal(images, torch.stack([r["image"] for r in reference]))
        masks = torch.cat([b["mask"] for b in batches])
        assert torch.equal(masks, torch.stack([r["mask"] for r in reference]))
        if epoch == 0:  # filled by the workers, seen from this process
            if isinstance(dataset.cache, MemoryCache):
                assert dataset.cache.filled() == len(dataset) == 9
            else:
                folder = tmp_path / "out" / ".landseg-cache"
                assert len(_entries(folder)) == 9
                used = sum(p.stat().st_size for p in _entries(folder))
                assert int((folder / USAGE_FILE).read_text()) == used
            dataset.decode = _refuse_decoding  # type: ignore[method-assign]


def _fill(cache: DiskCache, csv_path: Path, order: int) -> None:
    dataset = _dataset(csv_path)
    dataset.cache = cache
    for index in range(len(dataset))[::order]:
        dataset[index]


def test_processes_filling_one_disk_cache_at_once_lose_nothing(
    tmp_path: Path, make_dataset
) -> None:
    """Two DDP ranks or cv tasks: separate processes, own opens of the usage file."""
    csv_path = make_dataset(tmp_path, n=8, size=16)
    reference = _epoch(_dataset(csv_path), 0)
    cache = _disk(tmp_path / "cache")
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_fill, args=(cache, csv_path, o)) for o in (1, -1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    dataset = _dataset(csv_path)
    dataset.cache = cache
    dataset.decode = _refuse_decoding  # type: ignore[method-assign]
    assert _same(_epoch(dataset, 0), reference)
    actual = sum(p.stat().st_size for p in _entries(tmp_path / "cache"))
    assert actual == 8 * (HEADER_SIZE + 4 * 16 * 16)
    # a tile both wrote is counted twice until the next setup: the count errs on the safe side
    assert actual <= int((tmp_path / "cache" / USAGE_FILE).read_text()) <= 2 * actual
    assert cache.setup() == actual


def test_a_pickled_memory_cache_shares_its_rows(tmp_path: Path, make_dataset) -> None:
    """What a spawned DataLoader worker gets: the same memory, not a copy."""
    csv_path = make_dataset(tmp_path, n=3)
    dataset = _dataset(csv_path)
    reference = _epoch(dataset, 0)
    cache = dataset.cache = _memory(dataset)
    dataset[0]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.fd != cache.fd and clone.filled() == 1
    copy = _dataset(csv_path)
    copy.cache = clone
    copy[2]
    assert cache.filled() == 2
    dataset.decode = _refuse_decoding  # type: ignore[method-assign]
    assert torch.equal(dataset[2]["image"], reference[2]["image"])


# ---------------------------------------------------------------------------- config


def test_cache_keys_change_on_continue_and_stay_out_of_the_cv_hash(demo_config: dict) -> None:
    from landseg.jobs.plan import task_hash

    changed = json.loads(json.dumps(demo_config))
    changed["data_source"].update(cache="memory", cache_dir="/scratch/c", cache_limit_gb=5)
    allowed, problems = continuation_problems(demo_config, changed)
    assert problems == []
    assert set(allowed) == {
        "data_source.cache",
        "data_source.cache_dir",
        "data_source.cache_limit_gb",
    }
    base, other = (LandsegConfig.model_validate(c) for c in (demo_config, changed))
    assert task_hash(base, {"train": "x"}) == task_hash(other, {"train": "x"})
    assert base.data_source.cache == "disk" and base.data_source.cache_limit_gb == 20.0


# ---------------------------------------------------------------------------- kill

#: ``landseg`` that SIGKILLs itself as soon as its first step checkpoint is on disk.
KILLED_AFTER_FIRST_STEP_CHECKPOINT = """
import os, signal, sys
from landseg.training.checkpoint_io import AtomicCheckpointIO
save = AtomicCheckpointIO.save_checkpoint
def save_then_die(self, checkpoint, path, storage_options=None):
    save(self, checkpoint, path, storage_options)
    if "-step=" in os.path.basename(str(path)):
        os.kill(os.getpid(), signal.SIGKILL)
AtomicCheckpointIO.save_checkpoint = save_then_die
from landseg.cli.main import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_run_killed_while_filling_the_cache_continues_like_an_uncached_run(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from landseg.cli.main import main
    from landseg.data.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "data", n_tiles=48, size=32, seed=0)
    config = json.loads((tmp_path / "data" / "demo.json").read_text())
    for key in ("train_file", "val_file"):
        config["data_source"][key] = str(tmp_path / "data" / config["data_source"][key])
    config["data_source"].pop("test_file")
    config["data_source"]["data_augmentation"] = {"train": ["rotation90", "radiometry"]}
    config["train_setup"].update(epochs=2, checkpoint_every_n_steps=1, model_name="lightunet")
    config["device_setup"]["precision"] = "32-true"  # compared bit for bit (auto may pick bf16)
    config["output_setup"].update(
        output_folder=str(tmp_path / "runs"),
        name_exp_log="exp",
        use_tensorboard=False,
        get_prediction=False,
        progress=0,
    )

    def run(name: str, cache: str, **train: Any) -> int:
        config["data_source"]["cache"] = cache
        config["output_setup"]["version_name"] = name
        config["train_setup"]["continue_training"] = False
        config["train_setup"].update(train)
        return main(["train", "-c", str(write_config(tmp_path / f"{name}.json", config))])

    assert run("reference", "none") == 0
    assert not (tmp_path / "runs" / ".landseg-cache").exists()

    folder = tmp_path / "runs" / ".landseg-cache"
    killed = tmp_path / "runs" / "exp" / "killed"
    config["data_source"]["cache"] = "disk"
    config["output_setup"]["version_name"] = "killed"
    path = write_config(tmp_path / "killed.json", config)
    train_tiles = len((tmp_path / "data" / "train.csv").read_text().splitlines())

    # the run kills itself right after its first step checkpoint, with the cache still
    # filling: a kill sent from here would land wherever the machine's load let the run get to
    killed_run = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_FIRST_STEP_CHECKPOINT, "train", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-3000:]
    assert len(list((killed / "checkpoints").glob("*-step=*.ckpt"))) == 1
    filled = _entries(folder)
    assert 0 < len(filled) < train_tiles  # killed while filling
    filled[0].write_bytes(filled[0].read_bytes()[:1000])  # and one entry torn, as by a power cut
    (filled[1].parent / f".{filled[1].name}.x1y2.tmp").write_bytes(b"half an entry")

    assert run("killed", "disk", continue_training=True) == 0
    reference_history, reference_weights, reference_names, reference_scalars = final_state(
        tmp_path / "runs" / "exp" / "reference"
    )
    history, weights, names, scalars = final_state(killed)
    assert history == reference_history and names == reference_names
    assert scalars == reference_scalars
    for key, value in reference_weights.items():
        assert torch.equal(weights[key], value), key
    assert len(_entries(folder)) == train_tiles + len(
        (tmp_path / "data" / "val.csv").read_text().splitlines()
    )
