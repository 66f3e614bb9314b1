"""Tiny generated datasets (a few 32 x 32 tiles) for the data pipeline tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from affine import Affine

from landseg.config.schema import LandsegConfig
from landseg.core.files import write_geotiff


def write_dataset(
    tmp_path: Path,
    n: int = 6,
    size: int = 32,
    bands: int = 3,
    classes: int = 3,
    mask: Literal["onehot", "index"] = "onehot",
    dtype: str = "uint8",
    nodata: int | None = None,
    *,
    name: str = "train",
    header: bool = False,
    relative: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``n`` image/mask pairs and ``<name>.csv``; return the CSV path.

    Images hold random values of ``dtype`` (0-255 for uint8, 0-4095 for other integers, 0-1
    for floats); masks a random class per pixel, one-hot (``classes`` bands) or index (1 band).
    With ``nodata``, the mask's first row is unlabelled: the value ``nodata`` (index masks, in
    every band for one-hot masks), which is also set as the mask's nodata.
    """
    rng = np.random.default_rng(seed)
    folder = tmp_path / name
    rows = ["image,mask"] if header else []
    for i in range(n):
        kind = np.dtype(dtype)
        if kind.kind == "f":
            image = rng.random((bands, size, size)).astype(kind)
        else:
            top = 255 if kind == np.uint8 else 4095
            image = rng.integers(0, top + 1, (bands, size, size)).astype(kind)
        labels = rng.integers(0, classes, (size, size))
        if mask == "onehot":
            values = (labels[None] == np.arange(classes)[:, None, None]).astype(np.uint8)
            if nodata is not None:
                values[:, 0, :] = nodata
        else:
            values = labels.astype(np.uint8)
            if nodata is not None:
                values[0, :] = nodata
        image_path, mask_path = folder / "img" / f"{i}.tif", folder / "msk" / f"{i}.tif"
        transform = Affine(1, 0, 0, 0, -1, size)  # georeferenced: no rasterio warning
        write_geotiff(image_path, image, transform=transform)
        write_geotiff(mask_path, values, transform=transform, nodata=nodata)
        if relative:
            rows.append(f"{name}/img/{i}.tif,{name}/msk/{i}.tif")
        else:
            rows.append(f"{image_path},{mask_path}")
    csv_path = tmp_path / f"{name}.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def build_config(train_file: Path, tmp_path: Path, **data_source: Any) -> LandsegConfig:
    """A minimal valid config over ``train_file``; keyword arguments go into data_source."""
    train_setup = data_source.pop("train_setup", {})
    device_setup = data_source.pop("device_setup", {"num_workers": 0})
    return LandsegConfig.model_validate(
        {
            "data_source": {"train_file": train_file, **data_source},
            "train_setup": {"model_name": "unet", "batch_size": 2, **train_setup},
            "output_setup": {"output_folder": tmp_path / "out"},
            "device_setup": device_setup,
        }
    )


@pytest.fixture
def make_dataset() -> Callable[..., Path]:
    """``make_dataset(tmp_path, n=6, size=32, bands=3, classes=3, mask, dtype, nodata)``."""
    return write_dataset


@pytest.fixture
def make_config() -> Callable[..., LandsegConfig]:
    """``make_config(train_file, tmp_path, **data_source)``: a minimal valid config."""
    return build_config
