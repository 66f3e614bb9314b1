"""``landseg tiles``: the grid windows of scene rows written as ODEON's tiles, for users who want
tiles on disk or ODEON's own train tool.

Each split's grid (:func:`landseg.data.scenes.grid_windows`, the windows validation reads, and
training too without ``samples_per_epoch``) becomes, under the output folder:

* ``<split>/img/<scene>_<row>_<col>.tif``: the window's pixels, every band, in the scene's
  dtype, with its CRS, its own transform and the scene's nodata;
* ``<split>/msk/<scene>_<row>_<col>.tif``: the window's classes as a one-hot uint8 mask, one
  band per class in class order (ODEON's masks), all bands 0 where a pixel is not labelled:
  outside the AOI, at the image's nodata, or owned by an earlier grid window (so the tiles
  count every labelled pixel once, as the grid does);
* ``<split>.csv``: one ``<split>/img/...,<split>/msk/...`` row per tile, relative to the CSV.

The tiles read back (without ``mask_bands``, or with all of them) give exactly the samples of
the scene rows' grid. ``<scene>`` is the image's name; two scenes of a split with one name get
their CSV row added (``<scene>-row<N>``). Every file is written atomically, the CSV files last.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window

from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError
from landseg.core.files import atomic_write_text, write_geotiff
from landseg.data.csvfiles import load_splits
from landseg.data.raster import open_raster
from landseg.data.scenes import WindowPair, WindowReader, grid_windows, label_settings, read_scene
from landseg.data.summary import DataSummary


def write_tiles(config: LandsegConfig, summary: DataSummary, output: Path) -> dict[str, int]:
    """Cut every split's grid into ``output`` (which must be empty or absent); tiles per split."""
    source, setup = config.data_source, config.train_setup
    windows = source.windows
    if windows is None:
        raise ConfigError(
            "data_source.windows is not set: the rows are tiles already (landseg tiles cuts "
            "the grid windows of scene rows)"
        )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output}: not an empty folder; give a new one")
    splits = load_splits(
        source.train_file,
        source.val_file,
        source.test_file,
        percentage_val=source.percentage_val,
        seed=setup.random_seed,
        testing=setup.testing,
    )
    reader = WindowReader(label_settings(config, summary))
    counts: dict[str, int] = {}
    for split, pairs in splits.items():
        grid = grid_windows([read_scene(pair) for pair in pairs], windows.size, windows.step)
        stems = Counter(pair.image.stem for pair in pairs)
        rows = []
        for pair in grid:
            stem = pair.image.stem
            if stems[stem] > 1:
                stem = f"{stem}-row{pair.row}"
            row, col, _, _ = pair.window
            name = f"{stem}_{row}_{col}.tif"
            _write_tile(pair, reader, summary.n_classes, output / split, name)
            rows.append(f"{split}/img/{name},{split}/msk/{name}")
        counts[split] = len(rows)
        atomic_write_text(output / f"{split}.csv", "".join(f"{line}\n" for line in rows))
    return counts


def _write_tile(
    pair: WindowPair, reader: WindowReader, n_classes: int, folder: Path, name: str
) -> None:
    row, col, height, width = pair.window
    _, classes, _ = reader.read(pair)
    with open_raster(pair.image) as src:
        pixels = src.read(window=Window(col, row, width, height))
        crs, nodata = src.crs, src.nodata
        transform = src.transform @ Affine.translation(col, row)
    onehot = (classes[None] == np.arange(n_classes)[:, None, None]).astype(np.uint8)
    write_geotiff(folder / "img" / name, pixels, crs=crs, transform=transform, nodata=nodata)
    write_geotiff(folder / "msk" / name, onehot, crs=crs, transform=transform)
