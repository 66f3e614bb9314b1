"""GPU throughput: images/s of a ResNet-34 U-Net on 512x512 tiles, landseg against a hand loop.

Needs one CUDA GPU (not run on the 2-core CPU machine where the other benchmarks ran; see
README.md for how to run it). Data: ``landseg demo-data``'s generator at 512x512 (4-band uint8
GeoTIFFs, 4-class one-hot masks), written once to a temporary folder. Variants, each a fresh
model trained for ``--epochs`` epochs (the first is warm-up and left out):

* ``landseg``: ``landseg train`` (``model_name: resnet34``) with all logging on and the
  defaults a user gets (``device_setup.precision: auto``: bf16 and channels-last from compute
  capability 8.0 on, the decoded-tile cache);
* ``landseg-nocache``: the same with ``data_source.cache: none`` (every epoch decodes);
* ``landseg-fp32``: the same with ``precision: 32-true``;
* ``landseg-bf16-cl``: the same with ``precision: bf16-mixed`` and ``channels_last: true`` set
  by hand;
* ``hand``, ``hand-bf16``, ``hand-cl``, ``hand-bf16-cl``: the hand-written loop of
  :func:`benchmarks.common.hand_fit` on the same model, data, batch size and workers.

Images/s counts the train tiles of an epoch over its whole time (training, validation on
``--val`` tiles, and for landseg its checkpoints and loggers), with ``cuda.synchronize`` at
each stamp. GPU utilisation is sampled with ``nvidia-smi`` every 0.5 s during the steady
epochs; peak memory is ``torch.cuda.max_memory_allocated``. Then the loader alone
(:func:`loader_feed`), with and without the cache: the images/s it delivers onto the GPU,
and that rate over the training's (``feed_vs_training`` above 1: the loader keeps the GPU fed).

    python -m benchmarks.bench_gpu --tiles 128 --val 16 --batch-size 16 --workers 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    Clock,
    EpochClock,
    bare_loader,
    hand_fit,
    load_average,
    median,
    report,
)

VARIANTS = (
    "landseg",
    "landseg-nocache",
    "landseg-fp32",
    "landseg-bf16-cl",
    "hand",
    "hand-bf16",
    "hand-cl",
    "hand-bf16-cl",
)


class GpuSampler:
    """``nvidia-smi`` utilisation (%) and memory (MiB) every ``period`` s, in a thread."""

    def __init__(self, period: float = 0.5, enabled: bool = True):
        self.period = period
        self.enabled = enabled
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = "--query-gpu=utilization.gpu,memory.used"
        command = ["nvidia-smi", query, "--format=csv,noheader,nounits", "--id=0"]
        while not self._stop.wait(self.period):
            out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
            try:
                util, memory = (float(v) for v in out.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), util, memory))

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def mean_between(self, start: float, end: float) -> dict[str, float]:
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"gpu_util_pct": float("nan"), "gpu_mem_mib": float("nan")}
        return {
            "gpu_util_pct": round(sum(u for u, _ in inside) / len(inside), 1),
            "gpu_mem_mib": max(m for _, m in inside),
        }


def make_data(folder: Path, args: argparse.Namespace) -> tuple[list, list]:
    """Writes the tiles and their demo config; (image, mask) rows of train and val."""
    from landseg.data.demo import write_demo_dataset

    write_demo_dataset(folder, n_tiles=args.tiles + args.val, size=args.size)
    rows = [
        (folder / image, folder / mask)
        for image, mask in (
            line.split(",")[:2] for line in (folder / "zones.csv").read_text().splitlines()[1:]
        )
    ]
    return rows[: args.tiles], rows[args.tiles :]


def synchronizer(args: argparse.Namespace) -> Callable[[], None] | None:
    return torch.cuda.synchronize if args.device == "cuda" else None


def landseg_config(
    folder: Path, args: argparse.Namespace, train_rows: list, val_rows: list, name: str
) -> Path:
    """The config file of a landseg variant (``name``), as a user would write it."""
    config = json.loads((folder / "data" / "demo.json").read_text())
    for split, rows in (("train", train_rows), ("val", val_rows)):
        csv = folder / f"{split}.csv"
        csv.write_text("".join(f"{image},{mask}\n" for image, mask in rows))
        config["data_source"][f"{split}_file"] = str(csv)
    config["data_source"].pop("test_file")
    config["train_setup"].update(
        model_name="resnet34", epochs=args.epochs, batch_size=args.batch_size, deterministic=False
    )
    config["output_setup"].update(
        output_folder=str(folder / "runs"),
        version_name=name,
        get_prediction=False,
        progress=0,
    )
    config["device_setup"] = (
        {"accelerator": "gpu", "device": 1, "num_workers": args.workers}
        if args.device == "cuda"
        else {"accelerator": "cpu", "num_workers": args.workers}
    )
    if name == "landseg-bf16-cl":  # landseg's own options, as a user would set them
        config["device_setup"].update(precision="bf16-mixed", channels_last=True)
    elif name == "landseg-fp32":
        config["device_setup"].update(precision="32-true", channels_last=False)
    if name.endswith("nocache"):
        config["data_source"]["cache"] = "none"
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def landseg_variant(
    folder: Path, args: argparse.Namespace, train_rows: list, val_rows: list, name: str
) -> Clock:
    from landseg.planning.prepare import prepare
    from landseg.training.run import train

    prepared = prepare(landseg_config(folder, args, train_rows, val_rows, name), [])
    checked, summary = prepared.config, prepared.summary
    clock = EpochClock(sync=synchronizer(args))
    train(checked, summary, extra_callbacks=[clock])
    return clock.clock


def loader_feed(
    folder: Path, args: argparse.Namespace, train_rows: list, val_rows: list, name: str
) -> dict[str, float]:
    """Images/s that landseg's train loader delivers onto the device, without a model.

    The datamodule ``landseg train`` builds, as a run on this device sets it up (compact uint8
    batches when they go to a GPU), each batch copied to the device and scaled there as
    ``on_after_batch_transfer`` does; median of the epochs after the first (which fills the
    cache). Set beside a variant's images/s it says whether the loader keeps the GPU fed:
    the loader must deliver faster than the model consumes.
    """
    from landseg.data.datamodule import CsvSegmentationDataModule
    from landseg.planning.prepare import prepare

    prepared = prepare(landseg_config(folder, args, train_rows, val_rows, name), [])
    module = CsvSegmentationDataModule(prepared.config, prepared.summary)
    module.compact_transport = args.device == "cuda"
    loader = module.train_dataloader()
    scale = module.scaler("train")
    device = torch.device(args.device)
    sync = synchronizer(args)
    walls = []
    try:
        for epoch in range(args.epochs):
            module.train_sampler.set_epoch(epoch)
            start = time.perf_counter()
            for batch in loader:
                moved = {
                    key: value.to(device, non_blocking=True)
                    if isinstance(value, torch.Tensor)
                    else value
                    for key, value in batch.items()
                }
                scale(moved)
            if sync is not None:
                sync()
            walls.append(time.perf_counter() - start)
    finally:
        module.shutdown_workers()
    return {
        "images_per_s": round(len(train_rows) / median(walls[1:] or walls), 1),
        "first_epoch_images_per_s": round(len(train_rows) / walls[0], 1),
    }


def hand_variant(args: argparse.Namespace, train_rows: list, val_rows: list, name: str) -> Clock:
    from landseg.models.registry import build_model

    torch.manual_seed(0)
    clock = Clock(sync=synchronizer(args))
    hand_fit(
        build_model("resnet34", 4, 4, {}),
        bare_loader(train_rows, args.batch_size, args.workers, shuffle=True),
        bare_loader(val_rows, args.batch_size, args.workers, shuffle=False),
        epochs=args.epochs,
        n_classes=4,
        device=args.device,
        bf16="bf16" in name,
        channels_last=name.endswith("-cl"),
        clock=clock,
    )
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=128, help="train tiles")
    parser.add_argument("--val", type=int, default=16, help="val tiles")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="per variant; the first is skipped")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--no-loader",
        action="store_true",
        help="skip the loader-only measurement (with and without the cache)",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: a dry run of this script on a machine without a GPU (use tiny sizes)",
    )
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU (or --device cpu for a dry run)")
    load_before = load_average()
    results: dict[str, Any] = {}
    sampler = GpuSampler(enabled=cuda)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp, sampler:
        folder = Path(tmp)
        train_rows, val_rows = make_data(folder / "data", args)
        for name in args.variants:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            if name.startswith("landseg"):
                clock = landseg_variant(folder, args, train_rows, val_rows, name)
            else:
                clock = hand_variant(args, train_rows, val_rows, name)
            walls = [wall for wall, _ in clock.intervals()]
            steady_start, end = clock.stamps[1][0], clock.stamps[-1][0]
            results[name] = {
                "images_per_s": round(len(train_rows) / median(walls), 1),
                "s_per_epoch": round(median(walls), 3),
                **sampler.mean_between(steady_start, end),
                "peak_alloc_mib": round(torch.cuda.max_memory_allocated() / 2**20)
                if cuda
                else None,
            }
            print(name, results[name], flush=True)
    feeds: dict[str, Any] = {}
    if not args.no_loader:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-loader-") as tmp:
            folder = Path(tmp)
            train_rows, val_rows = make_data(folder / "data", args)
            for name in ("landseg", "landseg-nocache"):
                feeds[name] = loader_feed(folder, args, train_rows, val_rows, name)
                trained = results.get(name, {}).get("images_per_s")
                if trained:  # above 1: the loader delivers faster than the model consumes
                    feeds[name]["feed_vs_training"] = round(
                        feeds[name]["images_per_s"] / trained, 2
                    )
                print(f"loader {name}", feeds[name], flush=True)
    pairs = [
        ("landseg", "hand"),  # the default a user gets against the float32 hand loop
        ("landseg", "hand-bf16-cl"),  # ... and against the hand loop with the tricks
        ("landseg-fp32", "hand"),
        ("landseg-bf16-cl", "hand-bf16-cl"),
    ]
    for name, hand in pairs:
        if name in results and hand in results:
            results[f"{name}_vs_{hand}"] = round(
                results[name]["images_per_s"] / results[hand]["images_per_s"], 3
            )
    setup = {k: getattr(args, k) for k in ("tiles", "val", "size", "batch_size", "epochs")}
    device = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    setup.update(model="resnet34 U-Net (24.4M parameters)", device=device)
    report("gpu", {"setup": setup, "results": results, "loader": feeds}, load_before)


if __name__ == "__main__":
    main()
