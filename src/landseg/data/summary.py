"""What the data checks learn about a dataset, for the datamodule and the model factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Mask value of pixels with no class: ignored by every loss and metric.
IGNORE_INDEX = -1

MaskKind = Literal["onehot", "index"]


@dataclass(frozen=True)
class DataSummary:
    """Facts read from the raster headers (never from the config alone)."""

    n_image_bands: int  # bands fed to the model (after image_bands selection)
    n_classes: int
    class_labels: tuple[str, ...]
    mask_kind: MaskKind  # one-hot multi-band (ODEON) or single-band class indices
    patch_size: tuple[int, int]  # (height, width), the same for every tile of every split
    image_dtype: str  # "mixed" for images of several dtypes
    #: Value mapped to 1.0 before mean/std normalisation; per dtype for several dtypes.
    pixel_range: float | dict[str, float]
    split_sizes: dict[str, int] = field(default_factory=dict)
    report: str = ""  # one line: how much was checked
