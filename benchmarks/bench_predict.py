"""Prediction throughput: landseg's blended whole-scene prediction against a hand-written
sliding window, with and without test-time augmentation, and peak memory of a 10x scene.

The model is a lightunet (landseg's registry, built through ``SegmentationTask``). On the
Massachusetts scene (``../shared/data/massachusetts-buildings/22978945_15.tif``, else a
generated 3-band raster of ``--size`` pixels) it is first trained for ``--train-steps`` steps
by a plain loop (Adam, cross-entropy weighted 1:``--building-weight``, random
``--train-tile`` crops, each batch under a random element of the D4 group, so the network
has seen every orientation that TTA shows it), so that the IoU figures mean something; with
``--train-steps 0`` (always for a generated raster) it stays untrained, and only the timings
and memory figures mean something.

Timings, in this process, on the same model, scene, tile, overlap and batch size, median of
``--repeats`` rounds that alternate the variants (after one unmeasured forward pass):

- ``landseg``: ``scene.predict_scene`` (read a strip at a time, normalise, tiles on the CRS
  grid, Hann-blended probabilities, class GeoTIFF: deflate, tiled, colour table, atomic);
- ``hand``: the whole scene read at once, divided by 255, reflect-padded, tiles at
  ``0, stride, ...`` (the last one moved back to end at the edge), argmax of each tile
  written over the previous ones (no blending), one plain GeoTIFF (no compression);
- ``landseg+tta-<mode>``: ``predict_scene`` of ``TTAModel(model, mode)``, each ``--tta`` mode.

Figures: megapixels per second of the scene (its pixels, not the tiles'), the ratio
``landseg / hand`` and the TTA cost factor (TTA time / landseg time: ~8 expected for d4, 4
for flips and rot90), and with a mask the building IoU of each output (also on
``23429155_15.tif``, uint16, which the model never saw).

Memory: each in a fresh interpreter, ``predict_scene`` of the 1x scene and of a GDAL VRT that
mosaics the same file ``--factor`` times (no extra disk: a few kB of XML in a temporary
folder), as a column (``tall``: strips as wide as the scene) and as a grid (``grid``: about
sqrt(factor) scenes wide, wider strips). Peak RSS is the child's own ``ru_maxrss``, before
prediction (libraries and model loaded) and at the end; the target is the 10x scene within
10 % of the 1x scene.

    python -m benchmarks.bench_predict --train-steps 400 --tile 256 --overlap 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine

from benchmarks.common import (
    REPO,
    SHARED_DATA,
    add_threads_argument,
    apply_threads,
    bytecode_env,
    load_average,
    machine,
    median,
)

MASSACHUSETTS = SHARED_DATA / "massachusetts-buildings"
SCENE = MASSACHUSETTS / "22978945_15.tif"
OTHER_SCENE = MASSACHUSETTS / "23429155_15.tif"
LABELS = ["background", "building"]
GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}
TARGET_RSS = 1.10  # the 10x scene's peak RSS / the 1x scene's (the issue)


def peak_mib() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def proc_status_mib(key: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from ``/proc/self/status``, in MiB."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{key}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------- scene and model


def generated_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A georeferenced 3-band uint8 raster with structure at several scales, nodata 255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 110 + 60 * np.sin(x / 7.0) * np.cos(y / 11.0) + 30 * np.sin((x + y) / 53.0)
    bands = base[None] + rng.normal(0, 20, (3, size, size)) + np.arange(3)[:, None, None] * 10
    profile = {
        "driver": "GTiff",
        "count": 3,
        "height": size,
        "width": size,
        "dtype": "uint8",
        "crs": "EPSG:32631",
        "transform": Affine(0.5, 0.0, 640_003.0, 0.0, -0.5, 6_860_001.0),
        "nodata": 255,
        "compress": "lzw",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.clip(bands, 0, 250).astype(np.uint8))
    return path


def mask_of(scene: Path) -> Path | None:
    mask = scene.with_name(f"{scene.stem}_buildings.tif")
    return mask if mask.is_file() else None


def new_task(seed: int) -> Any:
    from landseg.config.load import validate_config
    from landseg.tasks.segmentation import SegmentationTask

    raw = {
        "data_source": {"train_file": "unused.csv", "class_labels": LABELS},
        "train_setup": {"model_name": "lightunet", "random_seed": seed},
        "output_setup": {"output_folder": "unused"},
    }
    torch.manual_seed(seed)
    return SegmentationTask(validate_config(raw).model_dump(mode="json"), 3, LABELS)


def train(task: Any, scene: Path, mask: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``args.train_steps`` Adam steps on random crops of the scene, D4-augmented."""
    with rasterio.open(scene) as src:
        image = torch.from_numpy(src.read().astype(np.float32) / np.float32(255))
    with rasterio.open(mask) as src:
        target = torch.from_numpy(src.read(1).astype(np.int64))
    net = task.model.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, args.building_weight]))
    rng = np.random.default_rng(args.seed)
    t, (height, width) = args.train_tile, target.shape
    start = time.perf_counter()
    losses = []
    for _ in range(args.train_steps):
        ys = rng.integers(0, height - t + 1, args.train_batch)
        xs = rng.integers(0, width - t + 1, args.train_batch)
        x = torch.stack([image[:, a : a + t, b : b + t] for a, b in zip(ys, xs, strict=True)])
        y = torch.stack([target[a : a + t, b : b + t] for a, b in zip(ys, xs, strict=True)])
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (1, 2))
        if flip:
            x, y = x.flip(3), y.flip(2)
        loss = criterion(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    task.eval()
    tail = losses[-50:]
    return {
        "steps": args.train_steps,
        "seconds": round(time.perf_counter() - start, 1),
        "loss_last_50": round(sum(tail) / len(tail), 4) if tail else None,
    }


def save_checkpoint(task: Any, path: Path) -> Path:
    """A checkpoint that ``LoadedModel.load`` reads, as ``landseg predict --run CKPT`` does."""
    import lightning

    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


# ---------------------------------------------------------------------------- the two ways


def landseg_predict(model: Any, scene: Path, out: Path, args: argparse.Namespace) -> Path:
    from landseg.inference.scene import PredictOptions, Tiling, predict_scene

    options = PredictOptions(Tiling(args.tile, args.overlap, args.batch_size), "classes", 255)
    return predict_scene(model, scene, out, options)


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def hand_predict(net: torch.nn.Module, scene: Path, out: Path, args: argparse.Namespace) -> Path:
    """The plain sliding window: no blending, no strips, no nodata, a plain GeoTIFF."""
    t, device = args.tile, next(net.parameters()).device
    with rasterio.open(scene) as src:
        image = src.read().astype(np.float32) / np.float32(255)
        crs, transform = src.crs, src.transform
    _, height, width = image.shape
    padded = np.pad(
        image, ((0, 0), (0, max(t - height, 0)), (0, max(t - width, 0))), mode="reflect"
    )
    stride = t - args.overlap
    windows = [
        (y, x) for y in window_starts(height, t, stride) for x in window_starts(width, t, stride)
    ]
    classes = np.empty(padded.shape[1:], dtype=np.uint8)
    with torch.inference_mode():
        for first in range(0, len(windows), args.batch_size):
            batch = windows[first : first + args.batch_size]
            tiles = np.stack([padded[:, y : y + t, x : x + t] for y, x in batch])
            logits = net(torch.from_numpy(tiles).to(device))
            predicted = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            for (y, x), p in zip(batch, predicted, strict=True):
                classes[y : y + t, x : x + t] = p
    profile = {
        "driver": "GTiff",
        "count": 1,
        "height": height,
        "width": width,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
    }
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(classes[:height, :width], 1)
    return out


def landseg_tiles(scene: Path, args: argparse.Namespace) -> int:
    from landseg.inference.scene import Tiling, grid_anchor, tile_count

    with rasterio.open(scene) as src:
        tiling = Tiling(args.tile, args.overlap, args.batch_size)
        return tile_count(src.height, src.width, tiling, grid_anchor(src.transform))


def hand_tiles(scene: Path, args: argparse.Namespace) -> int:
    with rasterio.open(scene) as src:
        stride = args.tile - args.overlap
        rows = window_starts(src.height, args.tile, stride)
        return len(rows) * len(window_starts(src.width, args.tile, stride))


def building_iou(prediction: Path, mask: Path | None) -> float | None:
    if mask is None:
        return None
    with rasterio.open(prediction) as src:
        predicted = src.read(1)
    with rasterio.open(mask) as src:
        truth = src.read(1) == 1
    counted = predicted != 255  # landseg's nodata
    hit = (predicted == 1) & counted
    union = (hit | truth) & counted
    return round(float((hit & truth).sum() / max(union.sum(), 1)), 4)


# ---------------------------------------------------------------------------- memory


def mosaic_vrt(scene: Path, path: Path, rows: int, cols: int) -> Path:
    """A VRT of ``rows`` x ``cols`` copies of ``scene``, on the scene's grid from its corner."""
    with rasterio.open(scene) as src:
        height, width, count = src.height, src.width, src.count
        dtype, nodata, crs, t = src.dtypes[0], src.nodata, src.crs, src.transform
    bands = []
    for band in range(1, count + 1):
        sources = "".join(
            "<SimpleSource>"
            f'<SourceFilename relativeToVRT="0">{escape(str(scene.resolve()))}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'<DstRect xOff="{c * width}" yOff="{r * height}" xSize="{width}" ySize="{height}"/>'
            "</SimpleSource>"
            for r in range(rows)
            for c in range(cols)
        )
        nodata_xml = f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else ""
        bands.append(
            f'<VRTRasterBand dataType="{GDAL_TYPES[dtype]}" band="{band}">'
            f"{nodata_xml}{sources}</VRTRasterBand>"
        )
    srs = f"<SRS>{escape(crs.to_wkt())}</SRS>" if crs else ""
    geo = f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>"
    path.write_text(
        f'<VRTDataset rasterXSize="{width * cols}" rasterYSize="{height * rows}">'
        f"{srs}{geo}{''.join(bands)}</VRTDataset>\n"
    )
    return path


def child(spec_path: Path) -> None:
    """One prediction in this fresh interpreter; prints its size, time and peak RSS as JSON."""
    from landseg.inference.scene import LoadedModel

    spec = json.loads(spec_path.read_text())
    args = argparse.Namespace(**spec["args"])
    model = LoadedModel.load(Path(spec["checkpoint"]), args.device)
    before = {"peak_rss_mib_before": peak_mib(), "rss_mib_before": proc_status_mib("VmRSS")}
    reset = reset_peak()
    start = time.perf_counter()
    out = landseg_predict(model, Path(spec["scene"]), Path(spec["out"]), args)
    seconds = time.perf_counter() - start
    during = proc_status_mib("VmHWM") if reset else None
    with rasterio.open(out) as src:
        pixels = src.width * src.height
    print(
        json.dumps(
            {
                "megapixels": round(pixels / 1e6, 2),
                "seconds": round(seconds, 1),
                **before,
                "peak_rss_mib_during_predict": during,
                "peak_rss_mib": peak_mib(),
            }
        )
    )


def measure_rss(
    folder: Path, name: str, checkpoint: Path, scene: Path, args: argparse.Namespace
) -> dict[str, Any]:
    spec = folder / f"{name}.json"
    spec.write_text(
        json.dumps(
            {
                "checkpoint": str(checkpoint),
                "scene": str(scene),
                "out": str(folder / f"{name}-prediction.tif"),
                "args": {k: getattr(args, k) for k in ("tile", "overlap", "batch_size", "device")},
            }
        )
    )
    command = [sys.executable, "-m", "benchmarks.bench_predict", "--child", str(spec)]
    env = bytecode_env(folder / "pycache")
    done = subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True, text=True)
    (folder / f"{name}-prediction.tif").unlink()
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def memory(folder: Path, checkpoint: Path, scene: Path, args: argparse.Namespace) -> dict:
    rows = max(d for d in range(1, math.isqrt(args.factor) + 1) if args.factor % d == 0)
    layouts = {"tall": (args.factor, 1), "grid": (rows, args.factor // rows)}
    scenes = {"1x": scene}
    for name, (r, c) in layouts.items():
        scenes[f"{args.factor}x {name}"] = mosaic_vrt(scene, folder / f"{name}.vrt", r, c)
    measure_rss(folder, "warm-up", checkpoint, scene, args)  # fills the bytecode cache
    results: dict[str, Any] = {
        name: measure_rss(folder, name.replace(" ", "-"), checkpoint, path, args)
        for name, path in scenes.items()
    }
    one = results["1x"]
    for name in scenes:
        big = results[name]
        if big["peak_rss_mib_during_predict"] is not None:
            big["predict_own_mib"] = round(
                big["peak_rss_mib_during_predict"] - big["rss_mib_before"], 1
            )
        if name != "1x":
            for key in ("peak_rss_mib", "peak_rss_mib_during_predict"):
                if big[key] is not None:
                    big[f"ratio_{key}_to_1x"] = round(big[key] / one[key], 3)
    results["target"] = f"10x scene within {round((TARGET_RSS - 1) * 100)} % of the 1x scene"
    results["layouts_rows_cols"] = layouts
    return results


# ---------------------------------------------------------------------------- main


def timings(
    model: Any, scene: Path, folder: Path, args: argparse.Namespace, tta: bool = True
) -> dict[str, Any]:
    from landseg.inference.tta import TTAModel

    with rasterio.open(scene) as src:
        megapixels = src.width * src.height / 1e6
    variants: dict[str, Any] = {
        "landseg": lambda out: landseg_predict(model, scene, out, args),
        "hand": lambda out: hand_predict(model.model, scene, out, args),
    }
    for mode in args.tta if tta else []:
        wrapped = TTAModel(model, mode)
        variants[f"landseg+tta-{mode}"] = lambda out, w=wrapped: landseg_predict(
            w, scene, out, args
        )
    with torch.inference_mode():  # one unmeasured forward pass (allocator, kernels)
        model.model(torch.zeros(args.batch_size, 3, args.tile, args.tile, device=model.device))
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, Path] = {}
    for _ in range(args.repeats):
        for name, run in variants.items():
            out = folder / f"{name}.tif"
            start = time.perf_counter()
            outputs[name] = run(out)
            seconds[name].append(time.perf_counter() - start)
    results: dict[str, Any] = {
        "scene_megapixels": round(megapixels, 3),
        "tiles": {"landseg": landseg_tiles(scene, args), "hand": hand_tiles(scene, args)},
    }
    mask = mask_of(scene)
    for name in variants:
        wall = median(seconds[name])
        results[name] = {
            "seconds": [round(s, 2) for s in seconds[name]],
            "megapixels_per_s": round(megapixels / wall, 3),
            "building_iou": building_iou(outputs[name], mask),
        }
    base = median(seconds["landseg"])
    results["landseg_vs_hand_time"] = round(base / median(seconds["hand"]), 3)
    for mode in args.tta if tta else []:
        results[f"tta_cost_factor_{mode}"] = round(median(seconds[f"landseg+tta-{mode}"]) / base, 2)
    return results


def other_scene_iou(model: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """Building IoU on the scene the model was not trained on, with and without each TTA."""
    from landseg.inference.tta import TTAModel

    mask = mask_of(OTHER_SCENE)
    if not OTHER_SCENE.is_file() or mask is None or args.train_steps == 0:
        return None
    result: dict[str, Any] = {"scene": OTHER_SCENE.name}
    for mode in [None, *args.tta]:
        wrapped = model if mode is None else TTAModel(model, mode)
        out = landseg_predict(wrapped, OTHER_SCENE, folder / f"other-{mode}.tif", args)
        result[f"building_iou_{mode or 'no_tta'}"] = building_iou(out, mask)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scene", type=Path, help=f"default: {SCENE.name} if present")
    parser.add_argument("--size", type=int, default=1024, help="generated raster's size (px)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tta", nargs="*", default=["d4"], help="TTA modes to time (d4)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every variant")
    parser.add_argument("--factor", type=int, default=10, help="size of the large VRT scene")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS children")
    parser.add_argument(
        "--large",
        default="3x3",
        help="also time landseg and the hand loop on a ROWSxCOLS VRT mosaic of the scene "
        "('' to skip)",
    )
    parser.add_argument("--train-steps", type=int, default=400, help="0: untrained model")
    parser.add_argument("--train-tile", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--building-weight", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.child:
        child(args.child)
        return
    from landseg.inference.scene import LoadedModel, choose_device
    from landseg.inference.tta import tta_problems

    problems = [line for mode in args.tta for line in tta_problems(mode)]
    if problems:
        parser.error("; ".join(problems))
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        folder = Path(tmp)
        scene = args.scene or (SCENE if SCENE.is_file() else None)
        if scene is None:
            scene = generated_scene(folder / "generated.tif", args.size)
        mask = mask_of(scene)
        if mask is None:
            args.train_steps = 0
        task = new_task(args.seed)
        training = train(task, scene, mask, args) if mask is not None else None
        task.to(choose_device(args.device))
        model = LoadedModel.from_task(task.eval())
        figures: dict[str, Any] = {"training": training}
        figures["throughput"] = timings(model, scene, folder, args)
        if args.large:  # the edge tiles' share falls as scenes grow
            rows, cols = (int(n) for n in args.large.split("x"))
            large = mosaic_vrt(scene, folder / "large.vrt", rows, cols)
            figures["throughput_large"] = {
                "mosaic_rows_cols": [rows, cols],
                **timings(model, large, folder, args, tta=False),
            }
        figures["other_scene"] = other_scene_iou(model, folder, args)
        if not args.no_memory:
            checkpoint = save_checkpoint(task.cpu(), folder / "model.ckpt")
            figures["memory"] = memory(folder, checkpoint, scene, args)
    info = machine()
    info["load_before"] = load_before
    info["load_after"] = load_average()
    result = {
        "benchmark": "predict",
        "machine": info,
        "date": info["date"],
        "command": " ".join(["python -m benchmarks.bench_predict", *sys.argv[1:]]),
        "setup": {
            "scene": scene.name,
            "model": "lightunet",
            "tile": args.tile,
            "overlap": args.overlap,
            "batch_size": args.batch_size,
            "device": str(model.device),
        },
        "figures": figures,
    }
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
