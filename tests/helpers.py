"""Helpers shared by test modules: no test module imports another's (fixtures live in the
conftest.py files; the functions and constants they and the tests share live here).

Sections: paths and configs, running ``landseg`` in a subprocess and stopping it, the final
state of a run, cross-validation configs and fabricated jobs, whole scenes, real data, and
in-process command runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# ---------------------------------------------------------------------------- configs


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def stop_and_resume_config(
    config: dict[str, Any], loader_workers: int = 0, precision: str = "32-true"
) -> dict[str, Any]:
    """``config`` (the demo's) as the stop-and-continue tests train it, returned: 3 epochs of
    batch 4, deterministic, the top 2 checkpoints by each metric, no TensorBoard, test split or
    predictions. Tests that train the same get the same reference run (``reference_run``).

    The precision is pinned (float32 unless told): these tests compare runs bit for bit, and
    ``precision: auto`` picks bf16 on a host that computes it natively and float32 elsewhere,
    so an unpinned test would test whatever its host has."""
    config["device_setup"].update(num_workers=loader_workers, precision=precision)
    config["train_setup"].update(epochs=3, batch_size=4, deterministic=True)
    config["output_setup"].update(save_top_k=2, use_tensorboard=False, get_prediction=False)
    config["data_source"].pop("test_file", None)
    return config


# ---------------------------------------------------------------------------- subprocesses

#: The grace period a stop must fit in: SLURM's KillWait and Kubernetes' default.
GRACE_S = 30


def sigkill_when(command: list[str], moment: Callable[[], bool], timeout: float = 300) -> int:
    """Run ``landseg COMMAND`` in a subprocess, SIGKILL it as soon as ``moment()`` is true.

    Returns the exit status (``-SIGKILL`` when killed; the command's own if it ended first).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "landseg.cli.main", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if moment():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return process.wait()


def signal_when(
    command: list[str],
    moment: Callable[[], bool],
    signum: int,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    group_size: int = 1,
) -> tuple[int, str]:
    """Run ``landseg COMMAND``, send ``signum`` once ``moment()`` is true and the command's
    process group has ``group_size`` processes (its DataLoader workers are running); return
    (exit code, stderr).

    The signal goes to the command's whole process group, as SLURM, Kubernetes and a terminal
    send it (DataLoader workers included)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "landseg.cli.main", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    sent = False
    while time.monotonic() < deadline and process.poll() is None:
        if moment() and processes_in_group(process.pid) >= group_size:
            os.killpg(process.pid, signum)
            sent = True
            break
        time.sleep(0.002)
    try:  # a stop must fit in a cluster's grace period (30 s by default), whole group included
        _, err = process.communicate(timeout=GRACE_S if sent else timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(
            f"still running {GRACE_S} s after {signal.Signals(signum).name}"
        ) from None
    return process.returncode, err


def processes_in_group(group: int) -> int:
    """How many live processes are in process group ``group`` (Linux /proc)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        count += fields[0] != "Z" and int(fields[2]) == group
    return count


# ---------------------------------------------------------------------------- SLURM


def slurm_env(tmp_path: Path, job: str = "4242", ntasks: int = 1, **extra: str) -> dict[str, str]:
    """What ``srun`` sets for task 0 of a one-node job, and a fake ``scontrol`` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    scontrol.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NAME": "train.sbatch",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": str(ntasks),
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": socket.gethostname(),
        "SLURM_RESTART_COUNT": "0",
        **extra,
    }


def scontrol_calls(tmp_path: Path) -> list[str]:
    """The arguments of each call of the fake ``scontrol`` of :func:`slurm_env`."""
    calls = tmp_path / "scontrol.calls"
    return calls.read_text().splitlines() if calls.exists() else []


def landseg(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``landseg ARGS`` in a subprocess with ``env``: (exit code, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "landseg.cli.main", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stderr


# ---------------------------------------------------------------------------- runs


def final_state(run: Path) -> tuple[dict, dict[str, torch.Tensor], list[str], list[dict]]:
    """What two runs that ended alike have in common: history, last weights (metric states
    included), top-k checkpoint names, and the logged scalars less their wall times."""
    from landseg.callbacks.run_logger import read_scalars

    history = json.loads((run / "history.json").read_text())
    (last_path,) = (run / "checkpoints").glob("*-last.ckpt")  # lightunet's, or another model's
    last = torch.load(last_path, weights_only=True)
    names = sorted(p.name for p in (run / "checkpoints").glob("*-loss-*.ckpt"))
    names += sorted(p.name for p in (run / "checkpoints").glob("*-miou-*.ckpt"))
    scalars = [{k: v for k, v in row.items() if k != "time"} for row in read_scalars(run)]
    return history, last["state_dict"], names, scalars


def assert_same_end(run: Path, reference: Path) -> None:
    """``run`` ended exactly like ``reference``: history, checkpoint names, logged scalars (train
    loss and mIoU of every epoch), and every tensor of the last checkpoint's state (weights,
    optimiser and metric states), bit for bit."""
    ref_history, ref_weights, ref_names, ref_scalars = final_state(reference)
    history, weights, names, scalars = final_state(run)
    assert ref_history and ref_names and ref_scalars  # never two empty lists found equal
    assert history == ref_history
    assert names == ref_names
    assert scalars == ref_scalars
    assert set(weights) == set(ref_weights)
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key


def assert_two_epochs_counting_each_val_pixel_once(run: Path, config_path: Path) -> Any:
    """The run finished its 2 epochs, and each validation's confusion matrix counts every
    labelled val pixel exactly once (however many processes shared the validation); returns
    the run's datamodule, set up for fit."""
    from landseg.config.load import load_config
    from landseg.data.checks import check_data
    from landseg.data.datamodule import DATAMODULES

    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs_done"] == 2
    history = json.loads((run / "history.json").read_text())
    assert list(history) == ["0", "1"]
    config = load_config(config_path)
    datamodule = DATAMODULES.get("csv")(config, check_data(config))
    datamodule.setup("fit")
    labelled = sum(int((item["mask"] >= 0).sum()) for item in datamodule.val_dataset)
    for entry in history.values():
        assert int(np.sum(entry["cm_macro"])) == labelled
    return datamodule


# ---------------------------------------------------------------------------- jobs


def cv_config(demo_dir: Path, output: Path, **cross_validation: Any) -> dict[str, Any]:
    """A tiny lightunet job: zone 1 held out, zones 2 and 3 in turn validate (2 tasks), 2 epochs,
    float32 (pinned: the cv and tune tests compare jobs run in different ways exactly, and
    ``precision: auto`` would pick bf16 or float32 by host)."""
    config = json.loads((demo_dir / "demo.json").read_text())
    config["device_setup"]["precision"] = "32-true"
    data = config["data_source"]
    data.pop("val_file")
    data.pop("test_file")
    data["train_file"] = str(demo_dir / "zones.csv")
    config["train_setup"].update(epochs=2, batch_size=4)
    config["output_setup"].update(
        output_folder=str(output),
        name_exp_log="job",
        use_tensorboard=False,
        get_prediction=False,
        progress=0,
        save_top_k=1,
    )
    config["cross_validation"] = {"group_column": "zone", "test_groups": ["1"]}
    config["cross_validation"].update(cross_validation)
    return config


JOB_LABELS = ["building", "water"]


def fabricated_job(
    folder: Path,
    groups: list[str],
    results: dict[str, list[dict[str, Any] | None]],
    *,
    validation: str | int = 1,
    **train_setup: Any,
) -> Any:
    """A job whose tasks have finished with the given test entries, without any training.

    ``results``: per test subject, one test-history entry (or None: not finished) per rotation.
    The job's files: job.json, and each finished task's history_test.json.
    """
    from landseg.config.schema import LandsegConfig
    from landseg.core.files import atomic_write_json
    from landseg.data.summary import DataSummary
    from landseg.jobs.plan import Job, Row, build_plan

    config = LandsegConfig.model_validate(
        {
            "data_source": {"train_file": "/data/zones.csv", "mask_bands": [1, 2],
                            "class_labels": JOB_LABELS},
            "train_setup": {"model_name": "lightunet", **train_setup},
            "output_setup": {"output_folder": str(folder.parent), "name_exp_log": folder.name},
            "cross_validation": {"group_column": "zone", "validation": validation},
        }
    )  # fmt: skip
    rows = [
        Row(Path(f"/d/{g}_{i}.tif"), Path(f"/m/{g}_{i}.tif"), g) for g in groups for i in (0, 1)
    ]
    assert config.cross_validation is not None
    plan, _ = build_plan(rows, config.cross_validation, 0.3)
    ids = [task.id for task in plan.tasks]
    data = DataSummary(2, 2, tuple(JOB_LABELS), "indices", (32, 32), "uint8", 255.0)  # type: ignore[arg-type]
    job = Job(folder, config, Path("/data/zones.csv"), plan, data, dict.fromkeys(ids, "h"),
              {i: {} for i in ids})  # fmt: skip
    job.save()
    for task in plan.tasks:
        entry = results.get(task.subject, [])[task.rotation - 1 : task.rotation]
        if entry and entry[0] is not None:
            atomic_write_json(job.task_dir(task) / "history_test.json", {"1": entry[0]})
    return job


class Log:
    """What write_summary reads of the job log: every task finished that has its results."""

    def __init__(self, job: Any) -> None:
        self.job = job

    def tasks(self) -> list[dict[str, Any]]:
        from landseg.runs.folder import RunFolder

        done = {
            t.id
            for t in self.job.plan.tasks
            if RunFolder(self.job.task_dir(t)).test_history.is_file()
        }
        return [
            {"task_id": t.id, "status": "finished" if t.id in done else "pending", "error": None}
            for t in self.job.plan.tasks
        ]


def entry(miou: float, building: float | None, water: float | None) -> dict[str, Any]:
    """One test-history entry of a fabricated job's task."""
    return {"Average/IoU": miou, "building/IoU": building, "water/IoU": water, "loss": 0.5,
            "step": 9, "cm_macro": [[1, 0], [0, 1]]}  # fmt: skip


# ---------------------------------------------------------------------------- scenes

CRS = "EPSG:32631"
TRANSFORM = Affine(0.5, 0.0, 640_003.0, 0.0, -0.5, 6_860_001.0)
LABELS = ["water", "vegetation", "bare soil", "building"]


def demo_task(demo_dir: Path, tmp: Path, **data_source: object) -> Any:
    """An untrained SegmentationTask with the demo's config (4 bands, 4 classes), seeded."""
    from landseg.config.load import validate_config
    from landseg.tasks.segmentation import SegmentationTask

    raw = json.loads((demo_dir / "demo.json").read_text())
    raw["output_setup"]["output_folder"] = str(tmp / "runs")
    raw["data_source"].update(data_source)
    config = validate_config(raw, demo_dir / "demo.json").model_dump(mode="json")
    torch.manual_seed(0)
    task = SegmentationTask(config, 4, LABELS)
    return task.eval()


def save_checkpoint(task: Any, path: Path) -> Path:
    """A checkpoint that ``SegmentationTask.load_from_checkpoint`` reads, without training."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def scene_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (4, H, W) uint8 landscape with structure at several scales, never 255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 110 + 60 * np.sin(x / 7.0)[None] * np.cos(y / 11.0)[None]
    bands = base + rng.normal(0, 20, (4, height, width)) + np.arange(4)[:, None, None] * 10
    return np.clip(bands, 0, 250).astype(np.uint8)


def write_scene(
    path: Path,
    pixels: np.ndarray,
    transform: Affine = TRANSFORM,
    nodata: float | None = 255,
    dtype: str | None = None,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "count": pixels.shape[0],
        "height": pixels.shape[1],
        "width": pixels.shape[2],
        "dtype": dtype or pixels.dtype.name,
        "crs": CRS,
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels.astype(profile["dtype"]))
    return path


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# ---------------------------------------------------------------------------- real data

TRAIN_SCENE = "22978945_15"
OTHER_SCENE = "23429155_15"
TILE = 64


def cut_tiles(scene: Path, mask: Path, out: Path, count: int, size: int = TILE) -> list[str]:
    """``count`` georeferenced size x size tiles of a scene and its mask, spread over a grid."""
    rows = []
    with rasterio.open(scene) as src, rasterio.open(mask) as msk:
        grid = [(r, c) for r in range(src.height // size) for c in range(src.width // size)]
        picks = np.linspace(0, len(grid) - 1, count).astype(int)
        for i in picks:
            window = Window(grid[i][1] * size, grid[i][0] * size, size, size)
            for name, dataset in (("img", src), ("msk", msk)):
                profile = {
                    **dataset.profile,
                    "width": size,
                    "height": size,
                    "transform": dataset.window_transform(window),
                    "tiled": False,
                }
                path = out / name / f"t{i:03d}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(dataset.read(window=window))
            rows.append(f"img/t{i:03d}.tif,msk/t{i:03d}.tif")
    return rows


# ---------------------------------------------------------------------------- W&B


def read_wandb_records(path: Path) -> list:
    """The protobuf records of an offline ``.wandb`` run file.

    The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0),
    then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32 of type and data, length,
    type: 1 full, 2 first, 3 middle, 4 last); a block's tail shorter than a header is padding.
    """
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, position, pending, records = 32 * 1024, 7, b"", []
    while position < len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        assert len(chunk) == length, "truncated record"
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad CRC at {position}"
        position += 7 + length
        pending += chunk
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    assert pending == b"", "the file ends inside a record"
    return records


def item_key(item: Any) -> str:
    """A W&B history item's key (nested keys joined with /)."""
    return item.key or "/".join(item.nested_key)


# ---------------------------------------------------------------------------- in process


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``landseg ARGS`` in this process: (exit code, captured stderr).

    landseg's and Lightning's console log handlers are made once per process, bound to the
    ``sys.stderr`` of that moment (an earlier test's capture, closed since): point them at ours.
    """
    from landseg.cli.main import main

    for name in ("landseg", "lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr
    code = main(args)
    return code, capsys.readouterr().err


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Torch on one thread while a test trains (fast and steady on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- multi-process launches


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def base_env() -> dict[str, str]:
    """This process's environment without any launcher's variables."""
    launcher = ("SLURM_", "TORCHELASTIC_", "PMI_", "PMIX_", "OMPI_")
    names = {"RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher) and k not in names}
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun_nodes(port: int) -> list[dict[str, str]]:
    """What ``torchrun --nnodes 2 --nproc-per-node 1`` gives the worker on each node."""
    common = {
        "TORCHELASTIC_RUN_ID": uuid.uuid4().hex,
        "TORCHELASTIC_RESTART_COUNT": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    return [{**common, "RANK": str(n), "GROUP_RANK": str(n)} for n in (0, 1)]


# ---------------------------------------------------------------------------- weights files


RGB = ["red", "green", "blue"]
#: Sentinel-2's 13 bands in torchgeo's order.
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
#: A tiny smp U-Net on a ResNet-18 encoder (3 stages: cheap to build).
SMALL_RESNET18 = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}


@functools.cache
def _timm_resnet18(in_chans: int) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, in_chans=in_chans).state_dict()


def timm_resnet18(in_chans: int = 3) -> dict[str, torch.Tensor]:
    """A timm ResNet-18's random weights (made once per band count)."""
    return dict(_timm_resnet18(in_chans))


class RunsCode:
    """A pickle that would call ``Path.touch`` on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """(the file, a part of the one line that refuses it) per kind of wrong file."""
    import timm

    torch.manual_seed(0)
    r50 = tmp_path / "resnet50.pth"
    torch.save(timm.create_model("resnet50").state_dict(), r50)
    mobile = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), mobile)
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": RunsCode(tmp_path / "ran")}, evil)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "note": "no tensors"}, empty)
    return {
        "resnet50": (r50, "have another shape (first: layer1.0.conv1.weight"),
        "mobilenet": (mobile, "of the encoder's 100 tensors fit, but"),
        "text": (text, "not a weights file"),
        "missing": (tmp_path / "absent.safetensors", "no such weights file"),
        "pickle": (evil, "could run code"),
        "no tensors": (empty, "holds no tensors"),
    }


def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every connection or retry's wait attempted from now on (each also fails): a
    lookup that must stay offline shows any attempt."""
    attempts: list[str] = []

    def refuse(what: str):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            attempts.append(what)
            raise OSError(f"{what} attempted")

        return call

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(time, "sleep", refuse("sleep"))
    return attempts


# ---------------------------------------------------------------------------- source modules


def landseg_source_modules() -> dict[str, Path]:
    """Every module of ``src/landseg`` by its dotted name, for the tests that read the source
    (the layer rule, the start-up imports) rather than import it."""
    import landseg

    src = Path(landseg.__file__).parent

    def name(path: Path) -> str:
        parts = path.relative_to(src.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name(path): path for path in sorted(src.rglob("*.py"))}
