"""Predictions of a split as GeoTIFFs that keep each input's CRS and transform.

``prediction_output_type`` (004) says what each file holds, one band per class:

- ``float32``: the per-class probabilities (softmax), in [0, 1];
- ``uint8``: the same probabilities scaled to 0-255 (``round(p * 255)``);
- ``bit``: one-hot bits, 1 in the band of the most probable class and 0 elsewhere (uint8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from landseg.inference.scene import LoadedModel, Tiling, encode_probabilities, predict_array
from landseg.io import write_geotiff


def predict_split(
    task: Any, datamodule: Any, split: str, out_dir: Path, output_type: str, batch_size: int = 8
) -> list[Path]:
    """Predict every image of ``split`` and write ``out_dir/<image name>.tif``.

    Images that fit in one tile (the usual training tiles) go through the model in batches, as
    they are; larger ones, of any size, are predicted with the blended tiles of
    :mod:`landseg.inference.scene`, so a test split of whole scenes works too.
    """
    dataset = getattr(datamodule, f"{split}_dataset")
    model = LoadedModel.from_task(task)
    tiling = Tiling(batch_size=batch_size)
    written: list[Path] = []
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        images = [dataset[i]["image"].numpy() for i in indices]
        shapes = {image.shape for image in images}
        if len(shapes) == 1 and max(images[0].shape[1:]) <= tiling.tile:
            probabilities = list(model.tile_probabilities(np.stack(images), batch_size))
        else:
            probabilities = [predict_array(model, image, tiling) for image in images]
        for i, probs in zip(indices, probabilities, strict=True):
            source = Path(dataset.pairs[i].image)
            with rasterio.open(source) as src:
                crs, transform = src.crs, src.transform
            destination = out_dir / f"{source.stem}.tif"
            write_geotiff(
                destination, encode_probabilities(probs, output_type), crs=crs, transform=transform
            )
            written.append(destination)
    return written
