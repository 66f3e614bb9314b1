"""Does an encoder trained on one dataset help on another? Validation mIoU per epoch, from the
exported encoder and from random weights.

What a user would do, with the landseg command line (each step a ``landseg`` process):

1. train a U-Net ResNet-34 (``model_name: resnet34``) on Dubai aerial tiles (RGB, 6 classes,
   normalised with their own mean and std) for ``--source-epochs`` epochs, and
   ``landseg export RUN --format encoder`` its encoder (which carries that normalisation);
2. cut tiles from ONE Massachusetts Buildings scene (``22978945_15``) for training and from
   the OTHER (``23429155_15``) for validation, each with a fourth band, the mean of the three
   (written by this script with rasterio, band names red, green, blue, intensity; 2 classes:
   background, building);
3. fine-tune on them from the exported encoder (``model_params.encoder_weights: <file>``,
   the fourth band's first-layer kernel and statistics from the pretrained ones, the
   normalisation taken from the file), and train the same run from random weights with the
   same normalisation given: same epochs, same seeds (``--seeds``);
4. write every run's validation mIoU per epoch as JSON (``--out``, default
   ``transfer.json``) and both curves, each seed and their mean, as a PNG (``--figure``).

Run by hand, never in tests; the data are ``../shared/data/dubai-aerial`` and
``../shared/data/massachusetts-buildings``. The defaults take about 20-30 minutes on a 2-core
CPU with ``--threads 1``::

    nice python -m benchmarks.bench_transfer --threads 1

A tiny end-to-end check (1 epoch, a few tiles, 1 seed, a few minutes)::

    python -m benchmarks.bench_transfer --epochs 1 --source-epochs 1 --tiles 8 \\
        --source-tiles 8 --val-tiles 8 --tile-size 64 --seeds 0 --threads 1

Where this landseg does not accept a weights file as ``encoder_weights`` yet, the pretrained
runs are reported as unavailable (with landseg's own refusal) and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DUBAI_CLASSES,
    REPO,
    SHARED_DATA,
    add_threads_argument,
    apply_threads,
    bytecode_env,
    dubai_config,
    dubai_rows,
    load_average,
    machine,
    write_csv,
)

MASSACHUSETTS = SHARED_DATA / "massachusetts-buildings"
TRAIN_SCENE, VAL_SCENE = "22978945_15", "23429155_15"
BANDS = ["red", "green", "blue", "intensity"]  # the fourth: the mean of the three
CLASSES = ["background", "building"]
ARMS = ("pretrained", "random")


# ---------------------------------------------------------------------------- the tiles


def cut_scene(scene: str, folder: Path, size: int, count: int | None) -> list[tuple[Path, Path]]:
    """Non-overlapping ``size`` px tiles of a scene with a fourth band (the mean of the three),
    uint8, band descriptions :data:`BANDS`, and their building masks; ``count`` of them evenly
    spaced through the scene (None: all). The second scene is stored as uint16 with values
    0-255: written as uint8, so both scenes read alike."""
    import rasterio
    from rasterio.windows import Window

    image_path = MASSACHUSETTS / f"{scene}.tif"
    mask_path = MASSACHUSETTS / f"{scene}_buildings.tif"
    if not image_path.exists():
        raise SystemExit(f"{image_path} is absent: this benchmark needs {MASSACHUSETTS}")
    with rasterio.open(image_path) as src, rasterio.open(mask_path) as msk:
        height, width = src.height, src.width
        origins = [
            (row, col)
            for row in range(0, height - size + 1, size)
            for col in range(0, width - size + 1, size)
        ]
        if count is not None and count < len(origins):
            picks = np.linspace(0, len(origins) - 1, count).round().astype(int)
            origins = [origins[i] for i in picks]
        rows = []
        for row, col in origins:
            window = Window(col, row, size, size)
            rgb = np.clip(src.read(window=window), 0, 255).astype(np.float32)
            pixels = np.concatenate([rgb, rgb.mean(axis=0, keepdims=True)]).round()
            mask = msk.read(1, window=window).astype(np.uint8)
            transform = src.window_transform(window)
            name = f"{scene}_r{row}_c{col}"
            image_out, mask_out = folder / "img" / f"{name}.tif", folder / "msk" / f"{name}.tif"
            for path, data, descriptions in (
                (image_out, pixels.astype(np.uint8), BANDS),
                (mask_out, mask[None], ["class"]),
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                profile = {
                    "driver": "GTiff",
                    "count": data.shape[0],
                    "height": size,
                    "width": size,
                    "dtype": "uint8",
                    "crs": src.crs,
                    "transform": transform,
                }
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(data)
                    for band, text in enumerate(descriptions, start=1):
                        dst.set_band_description(band, text)
            rows.append((image_out, mask_out))
    return rows


# ---------------------------------------------------------------------------- the configs


def output_setup(folder: Path, name: str) -> dict[str, Any]:
    return {
        "output_folder": str(folder / "runs"),
        "name_exp_log": name,
        "use_tensorboard": False,
        "save_history": True,
        "save_top_k": 1,
        "get_prediction": False,
        "progress": 0,
    }


def band_names_key(env: dict[str, str]) -> bool:
    """Whether the landseg the runs use (this checkout's, in ``env``) has
    ``data_source.band_names`` (the names say which pretrained kernel and statistics each band
    takes); asked of a child process, which imports what ``landseg`` commands import."""
    code = (
        "from landseg.config.schema import DataSource; "
        "print('band_names' in DataSource.model_fields)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip() == "True"


def band_statistics(rows: list[tuple[Path, Path]]) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the images of ``rows``, in the 0-1 range (uint8 / 255)."""
    import rasterio

    pixels = []
    for image, _ in rows:
        with rasterio.open(image) as src:
            pixels.append(src.read().reshape(src.count, -1).astype(np.float64) / 255)
    stacked = np.concatenate(pixels, axis=1)
    return stacked.mean(axis=1).tolist(), stacked.std(axis=1).tolist()


def four_band_normalization(
    mean: list[float], std: list[float], named: bool
) -> dict[str, list[float]]:
    """What a run reading :data:`BANDS` takes from weights trained on red, green, blue with
    ``mean``/``std`` (landseg's rule): with band names, the fourth band, unknown to the
    weights, the mean of their means and of their stds; without, weights band 1 (``i % 3``)."""
    if named:
        return {"mean": [*mean, sum(mean) / 3], "std": [*std, sum(std) / 3]}
    return {"mean": [*mean, mean[0]], "std": [*std, std[0]]}


def source_config(
    folder: Path, args: argparse.Namespace, named: bool
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The Dubai run whose encoder is exported, normalised with its training tiles' mean and
    std (which the export carries); and that normalisation."""
    train = dubai_rows("train", args.source_tiles)
    val = dubai_rows("val", max(4, args.source_tiles // 4))
    config = dubai_config(
        folder / "dubai",
        train,
        val,
        model="resnet34",
        epochs=args.source_epochs,
        batch_size=args.batch_size,
        logging=False,
    )
    config["output_setup"] = output_setup(folder, "dubai")
    config["train_setup"]["random_seed"] = 0
    mean, std = band_statistics(train)
    stats = {"mean": mean, "std": std}
    config["data_source"]["normalization_weights"] = {"train": stats}
    if named:
        config["data_source"]["band_names"] = BANDS[:3]
    return config, stats


def target_config(
    folder: Path,
    train_csv: Path,
    val_csv: Path,
    args: argparse.Namespace,
    seed: int,
    weights: Path | None,
    named: bool,
    normalization: dict[str, list[float]] | None,
) -> dict[str, Any]:
    """A Massachusetts run: from the exported encoder (``weights``; its normalisation comes
    with it), or from random weights with ``normalization`` given, the same values."""
    data: dict[str, Any] = {
        "train_file": str(train_csv),
        "val_file": str(val_csv),
        "image_bands": [1, 2, 3, 4],
        "class_labels": CLASSES,
    }
    if named:
        data["band_names"] = BANDS
    if normalization is not None:
        data["normalization_weights"] = {"train": normalization}
    return {
        "data_source": data,
        "train_setup": {
            "model_name": "resnet34",
            "model_params": {"encoder_weights": str(weights) if weights else None},
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "loss": "ce",
            "optimizer_config": {"optimizer": "adam"},
            "random_seed": seed,
        },
        "output_setup": output_setup(folder, "massachusetts"),
        "device_setup": {"accelerator": "cpu", "num_workers": 0},
    }


# ---------------------------------------------------------------------------- landseg


def landseg(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One ``landseg`` command, as a user runs it (this checkout's landseg)."""
    return subprocess.run(
        [sys.executable, "-m", "landseg.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def train(config: dict[str, Any], path: Path, version: str, env: dict[str, str]) -> Path:
    """``landseg train -c`` on ``config`` written to ``path``; the run folder."""
    config["output_setup"]["version_name"] = version
    path.write_text(json.dumps(config, indent=2))
    done = landseg(["train", "-c", str(path)], env)
    if done.returncode != 0:
        raise RuntimeError(f"landseg train -c {path} failed: {last_line(done)}")
    out = config["output_setup"]
    return Path(out["output_folder"]) / out["name_exp_log"] / version


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def val_miou(run: Path) -> list[float]:
    """Validation mIoU per epoch, from the run's history file."""
    history = json.loads((run / "history.json").read_text())
    return [float(history[epoch]["Average/IoU"]) for epoch in sorted(history, key=int)]


def export_encoder(run: Path, env: dict[str, str]) -> Path:
    done = landseg(["export", str(run), "--format", "encoder"], env)
    if done.returncode != 0:
        raise RuntimeError(f"landseg export {run} --format encoder failed: {last_line(done)}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("written: ")]
    (path,) = [Path(line.removeprefix("written: ")) for line in lines]
    return path


def refusal(config: dict[str, Any], path: Path, env: dict[str, str]) -> str | None:
    """Why ``landseg validate`` refuses a config (None: it accepts it)."""
    path.write_text(json.dumps(config, indent=2))
    done = landseg(["validate", "-c", str(path)], env)
    return None if done.returncode == 0 else last_line(done)


# ---------------------------------------------------------------------------- the figure


def figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"pretrained": "#1f77b4", "random": "#d62728"}
    labels = {"pretrained": "from the Dubai encoder", "random": "from random weights"}
    for arm in ARMS:
        curves = [run["val_miou"] for run in results["runs"] if run["arm"] == arm]
        if not curves:
            continue
        epochs = np.arange(1, len(curves[0]) + 1)
        for curve in curves:
            ax.plot(epochs, curve, color=colours[arm], alpha=0.3, linewidth=1)
        mean = np.mean(np.array(curves), axis=0)
        ax.plot(epochs, mean, color=colours[arm], linewidth=2.5, marker="o", label=labels[arm])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mIoU (other scene)")
    ax.set_title(
        f"resnet34 U-Net on Massachusetts (4 bands), {len(results['seeds'])} seed(s): "
        "thin lines per seed, thick their mean",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each Massachusetts run")
    parser.add_argument("--tiles", type=int, default=48, help="train tiles from the first scene")
    parser.add_argument(
        "--val-tiles", type=int, default=None, help="val tiles from the other (default: all)"
    )
    parser.add_argument("--tile-size", type=int, default=128, help="tile size in px (x 32)")
    parser.add_argument("--source-epochs", type=int, default=4, help="epochs on Dubai")
    parser.add_argument("--source-tiles", type=int, default=64, help="Dubai train tiles")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument(
        "--work", type=Path, default=Path("bench-transfer"), help="folder of tiles and runs"
    )
    parser.add_argument("--out", type=Path, default=Path("transfer.json"))
    parser.add_argument("--figure", type=Path, default=Path("transfer.png"))
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.tile_size % 32:
        parser.error(f"--tile-size must be a multiple of 32 (resnet34's), got {args.tile_size}")
    apply_threads(args.threads)
    load_before = load_average()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = bytecode_env(work / "pycache")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    start = time.perf_counter()

    print("1/3 Dubai: train resnet34, export its encoder", flush=True)
    named = band_names_key(env)
    source_cfg, source_stats = source_config(work, args, named)
    source = train(source_cfg, work / "dubai.json", "source", env)
    normalization = four_band_normalization(source_stats["mean"], source_stats["std"], named)
    encoder = export_encoder(source, env)
    print(f"    encoder: {encoder}", flush=True)

    print("2/3 Massachusetts: 4-band tiles of one scene (train) and the other (val)", flush=True)
    tiles = work / f"massachusetts-{args.tile_size}"
    train_rows = cut_scene(TRAIN_SCENE, tiles, args.tile_size, args.tiles)
    val_rows = cut_scene(VAL_SCENE, tiles, args.tile_size, args.val_tiles)
    train_csv = write_csv(train_rows, tiles / "train.csv")
    val_csv = write_csv(val_rows, tiles / "val.csv")
    print(f"    {len(train_rows)} train, {len(val_rows)} val tiles", flush=True)

    print("3/3 fine-tune from the encoder, and from random weights", flush=True)
    check = target_config(work, train_csv, val_csv, args, args.seeds[0], encoder, named, None)
    unavailable = refusal(check, work / "pretrained-check.json", env)
    if unavailable:
        print(f"    pretrained runs unavailable: {unavailable}", flush=True)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for arm in ARMS:  # side by side, alternating
            if arm == "pretrained" and unavailable:
                continue
            weights, given = (encoder, None) if arm == "pretrained" else (None, normalization)
            config = target_config(work, train_csv, val_csv, args, seed, weights, named, given)
            began = time.perf_counter()
            run = train(config, work / f"{arm}-{seed}.json", f"{arm}-{seed}", env)
            row = {
                "arm": arm,
                "seed": seed,
                "run": str(run),
                "val_miou": val_miou(run),
                "seconds": round(time.perf_counter() - began, 1),
            }
            used = json.loads((run / "config.json").read_text())["data_source"]
            row["normalization"] = (used.get("normalization_weights") or {}).get("train")
            row["same_normalization"] = row["normalization"] == normalization
            state = json.loads((run / "run.json").read_text())
            for key in ("encoder_weights", "fine_tuning", "normalization_from_weights"):
                if key in state:  # what the weights loader recorded, where it does
                    row[key] = state[key]
            runs.append(row)
            print(f"    {arm} seed {seed}: {row['val_miou']} ({row['seconds']} s)", flush=True)

    results: dict[str, Any] = {
        "benchmark": "transfer",
        "command": " ".join(["python", "-m", "benchmarks.bench_transfer", *sys.argv[1:]]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": args.seeds,
        "source_run": str(source),
        "encoder_file": str(encoder),
        "dubai_classes": DUBAI_CLASSES,
        "tiles": {"train": len(train_rows), "val": len(val_rows), "size": args.tile_size},
        "band_names": named,
        "normalization": normalization,
        "same_normalization": all(r["same_normalization"] for r in runs),
        "pretrained_unavailable": unavailable,
        "runs": runs,
        "mean_val_miou": {
            arm: np.mean([r["val_miou"] for r in runs if r["arm"] == arm], axis=0).tolist()
            for arm in ARMS
            if any(r["arm"] == arm for r in runs)
        },
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    figure(results, args.figure)
    print(json.dumps({k: results[k] for k in ("mean_val_miou", "minutes")}, indent=2))
    print(f"written: {args.out}, {args.figure}")


if __name__ == "__main__":
    main()
