"""A small generated dataset and its config, so ``landseg train`` can be tried without real data.

The tiles are cut from one synthetic landscape: a smooth random field thresholded into water
(low), bare soil and vegetation, with rectangular buildings on dry land. Each class has its own
4-band spectral signature (blue, green, red, near-infrared) plus noise and a per-tile gain, so a
tiny model learns it in a few epochs, and a random split is not trivially pixel-identical.
Everything follows ODEON's conventions: georeferenced uint8 GeoTIFFs, one-hot masks (one band
per class, all bands 0 = unlabelled), ``image,mask`` CSVs without header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import Affine

from landseg.core.errors import LandsegError
from landseg.core.files import atomic_write_json, atomic_write_text, write_geotiff

#: Classes in band order; n_classes keeps the first n.
CLASS_LABELS = ("water", "vegetation", "bare soil", "building")
#: Mean (blue, green, red, near-infrared) digital numbers per class.
SIGNATURES = np.array(
    [
        [70, 80, 55, 25],  # water: dark, very low NIR
        [55, 95, 60, 185],  # vegetation: green, high NIR
        [115, 115, 135, 125],  # bare soil: brownish, medium NIR
        [175, 170, 165, 150],  # building: bright grey roofs
    ],
    dtype=np.float64,
)
BAND_NAMES = ("blue", "green", "red", "near-infrared")
MARKER = ".landseg-demo.json"
CONFIG_NAME = "demo.json"
CRS = "EPSG:32631"  # WGS 84 / UTM zone 31N (metropolitan France)
ORIGIN = (640_000.0, 6_860_000.0)  # upper-left corner of the tile grid, in metres
PIXEL_SIZE = 0.5  # metres
N_ZONES = 3
SPLIT_SHARES = (0.6, 0.2, 0.2)  # train, val, test
WATER = 0
BUILDING = CLASS_LABELS.index("building")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian low-pass white noise (via FFT), standardised: blobs about ``scale`` px wide."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    gain = np.exp(-2.0 * (math.pi * scale) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=shape)
    return (field - field.mean()) / field.std()


def _add_buildings(
    rng: np.random.Generator, classes: np.ndarray, size: int, target_share: float
) -> np.ndarray:
    """Draw rectangles on dry land until buildings cover ``target_share``; returns roof gains."""
    height, width = classes.shape
    roof = np.ones(classes.shape)
    side_min, side_max = max(3, size // 10), max(4, size // 3)
    goal = target_share * classes.size
    covered = 0
    for _ in range(50 * classes.size // side_min**2):
        if covered >= goal:
            break
        h, w = rng.integers(side_min, side_max + 1, size=2)
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        block = classes[y : y + h, x : x + w]
        if (block == WATER).any():
            continue
        covered += int((block != BUILDING).sum())
        block[...] = BUILDING
        roof[y : y + h, x : x + w] = rng.uniform(0.88, 1.12)
    return roof


def _landscape(
    rng: np.random.Generator, shape: tuple[int, int], n_classes: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class map and (4, H, W) float image of the whole mosaic."""
    field = _smooth_field(rng, shape, scale=size / 4)
    n_area = n_classes - 1 if n_classes > BUILDING else n_classes
    # Equal final shares: water keeps 1/n; land (before buildings) is split between the others.
    cuts = [1 / n_classes + k * (1 - 1 / n_classes) / (n_area - 1) for k in range(n_area - 1)]
    classes = np.digitize(field, np.quantile(field, cuts)).astype(np.int64)
    classes = np.array([WATER, *range(2, n_area), 1])[classes]  # highest ground: vegetation
    gain = np.ones(shape)
    if n_classes > BUILDING:
        gain = _add_buildings(rng, classes, size, target_share=1 / n_classes)
    texture = 1.0 + 0.06 * _smooth_field(rng, shape, scale=2.0)
    image = SIGNATURES[classes].transpose(2, 0, 1) * gain * texture
    image += rng.normal(0.0, 8.0, image.shape)
    return classes, image


def _tile_names(n_tiles: int, cols: int) -> list[str]:
    return [f"tile_{i // cols:02d}_{i % cols:02d}.tif" for i in range(n_tiles)]


def _check_args(n_tiles: int, size: int, n_classes: int) -> None:
    problems = []
    if n_tiles < 3:
        problems.append(f"n_tiles must be at least 3 (one per split), got {n_tiles}")
    if size < 16 or size % 16:
        problems.append(f"size must be a multiple of 16 (U-Net poolings), got {size}")
    if not 2 <= n_classes <= len(CLASS_LABELS):
        problems.append(f"n_classes must be between 2 and {len(CLASS_LABELS)}, got {n_classes}")
    if problems:
        raise LandsegError(problems)


def _write_csv(path: Path, rows: Sequence[tuple[str, ...]], header: str | None = None) -> None:
    lines = ([header] if header else []) + [",".join(row) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _remove_stale_tiles(folder: Path, keep: set[str]) -> None:
    """Drop tiles of an earlier, larger demo so the folders hold only what the CSVs name."""
    for sub in ("img", "msk"):
        for path in (folder / sub).glob("tile_*.tif"):
            if path.name not in keep:
                path.unlink()


def _demo_config(n_classes: int) -> dict[str, Any]:
    """ODEON's four sections; paths are relative to the config's folder."""
    return {
        "data_source": {
            "train_file": "train.csv",
            "val_file": "val.csv",
            "test_file": "test.csv",
            "image_bands": [1, 2, 3, 4],
            "mask_bands": list(range(1, n_classes + 1)),
            "class_labels": list(CLASS_LABELS[:n_classes]),
            "resolution": PIXEL_SIZE,
        },
        "train_setup": {
            "model_name": "lightunet",
            "epochs": 12,
            "batch_size": 4,
            "lr": 0.005,
            "loss": "ce",
            "optimizer_config": {"optimizer": "adam"},
            "random_seed": 42,
            "deterministic": True,
        },
        "output_setup": {
            "output_folder": "runs",
            "name_exp_log": "demo",
            "save_top_k": 1,
            "use_tensorboard": True,
            "get_prediction": True,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": 0},
    }


def write_demo_dataset(
    folder: Path, *, n_tiles: int = 48, size: int = 64, n_classes: int = 4, seed: int = 0
) -> Path:
    """Write the generated dataset under ``folder`` and return the path of its config.

    Layout: ``img/`` and ``msk/`` tiles, ``train.csv``/``val.csv``/``test.csv`` (60/20/20 %),
    ``zones.csv`` (3 spatial zones, for group-wise cross-validation) and ``demo.json``. The same
    arguments always give the same pixels.
    """
    _check_args(n_tiles, size, n_classes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = {"n_tiles": n_tiles, "size": size, "n_classes": n_classes, "seed": seed}
    # The marker comes first, so an interrupted run leaves a folder it may overwrite.
    atomic_write_json(folder / MARKER, {"landseg_demo": params})

    rng = np.random.default_rng(seed)
    cols = math.ceil(math.sqrt(n_tiles))
    rows = math.ceil(n_tiles / cols)
    classes, image = _landscape(rng, (rows * size, cols * size), n_classes, size)
    names = _tile_names(n_tiles, cols)
    _remove_stale_tiles(folder, keep=set(names))
    hole = max(1, size // 16)  # an unlabelled square per tile, for the ignore path
    for i, name in enumerate(names):
        r, c = divmod(i, cols)
        window = np.s_[r * size : (r + 1) * size, c * size : (c + 1) * size]
        gain = rng.uniform(0.9, 1.1)  # per-tile illumination
        pixels = np.clip(np.rint(image[(slice(None), *window)] * gain), 1, 255).astype(np.uint8)
        onehot = np.eye(n_classes, dtype=np.uint8)[classes[window]].transpose(2, 0, 1)
        y, x = rng.integers(0, size - hole + 1, size=2)
        onehot[:, y : y + hole, x : x + hole] = 0
        west, north = ORIGIN[0] + c * size * PIXEL_SIZE, ORIGIN[1] - r * size * PIXEL_SIZE
        transform = Affine(PIXEL_SIZE, 0.0, west, 0.0, -PIXEL_SIZE, north)
        write_geotiff(folder / "img" / name, pixels, crs=CRS, transform=transform)
        write_geotiff(folder / "msk" / name, onehot, crs=CRS, transform=transform)

    pairs = [(f"img/{name}", f"msk/{name}") for name in names]
    order = rng.permutation(n_tiles)
    n_val = max(1, round(SPLIT_SHARES[1] * n_tiles))
    n_test = max(1, round(SPLIT_SHARES[2] * n_tiles))
    splits = {
        "val": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }
    for split, indices in splits.items():
        _write_csv(folder / f"{split}.csv", [pairs[i] for i in sorted(indices)])
    # Zones are runs of consecutive tiles in row-major order: spatially contiguous blocks.
    zones = [(*pair, str(i * N_ZONES // n_tiles + 1)) for i, pair in enumerate(pairs)]
    _write_csv(folder / "zones.csv", zones, header="image,mask,zone")

    config = folder / CONFIG_NAME
    atomic_write_json(config, _demo_config(n_classes))
    return config


def _is_demo_folder(folder: Path) -> bool:
    try:
        return "landseg_demo" in json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, TypeError):
        return False


def demo_data_command(folder: Path, n_tiles: int, size: int, seed: int) -> Path:
    """``landseg demo-data``: write the demo, refusing to overwrite anything but an earlier demo.

    An earlier demo folder (recognised by its marker file) is rewritten in place; anything else
    in it, such as the ``runs/`` of earlier trainings, is kept.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LandsegError(f"{folder} exists and is not a folder; choose another path")
    if folder.is_dir() and any(folder.iterdir()) and not _is_demo_folder(folder):
        raise LandsegError(
            f"{folder} is not empty and was not written by landseg demo-data; "
            "choose an empty or new folder"
        )
    return write_demo_dataset(folder, n_tiles=n_tiles, size=size, seed=seed)
