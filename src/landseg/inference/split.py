"""Predictions of a split as Cloud-Optimised GeoTIFFs that keep each input's CRS and transform.

``prediction_output_type`` (ODEON's train tool's, plus landseg's ``classes``) says what each file
holds:

- ``float32``: the per-class probabilities (softmax), in [0, 1], one band per class;
- ``uint8``: the same probabilities scaled to 0-254 (``round(p * 255)``, at most 254: 255
  is nodata);
- ``bit``: one-hot bits, 1 in the band of the most probable class and 0 elsewhere (uint8);
- ``classes``: one uint8 band of class indices (255: nodata) with a colour table, and a QGIS
  style ``<stem>.qml`` beside it.

The files are :func:`landseg.inference.scene.write_prediction`'s, as ``landseg predict``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from landseg.data.raster import open_raster
from landseg.inference.scene import (
    LoadedModel,
    Normalization,
    PixelSettings,
    Tiling,
    predict_array,
    valid_pixels,
    write_prediction,
)
from landseg.inference.tta import with_tta


def predict_split(
    task: Any,
    datamodule: Any,
    split: str,
    out_dir: Path,
    output_type: str,
    batch_size: int = 8,
    tta: str | None = None,
) -> list[Path]:
    """Predict every image of ``split`` and write ``out_dir/<image name>.tif``.

    Images that fit in one tile (the usual training tiles) go through the model in batches, as
    they are; larger ones, of any size, are predicted with the blended tiles of
    :mod:`landseg.inference.scene`, so a test split of whole scenes works too. Files are
    written by :func:`~landseg.inference.scene.write_prediction`, as ``landseg predict``'s:
    same nodata (an input pixel that is nodata in every band read), class names and tags.
    ``tta``: test-time augmentation (:mod:`landseg.inference.tta`).
    """
    dataset = getattr(datamodule, f"{split}_dataset")
    model = with_tta(LoadedModel.from_task(task), tta)
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
            destination = Path(out_dir) / f"{source.stem}.tif"
            with open_raster(source) as src:
                valid = valid_pixels(src, dataset.image_bands)
                pixel_range = Normalization.for_raster(model.config, src.dtypes[0], source)
                settings = PixelSettings.of(model, pixel_range.pixel_range, tiling)
                strips = [(0, probs, valid)]
                write_prediction(destination, src, model, output_type, strips, settings)
            written.append(destination)
    return written
