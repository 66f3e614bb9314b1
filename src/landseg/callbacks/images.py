"""Image | mask | prediction grids of fixed validation samples, in every logger that takes images.

The same samples every epoch, so the grids show how the predictions evolve on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from landseg.callbacks.cadence import DrawsOnCadence, VisualCadence
from landseg.loggers.figures import class_palette, colorize, display_image
from landseg.loggers.registry import image_writers_of
from landseg.loggers.tensorboard import logger_step
from landseg.tasks.interface import segmentation_module
from landseg.tasks.metrics import class_indices

log = logging.getLogger(__name__)

#: Pixels of white between the tiles of a grid.
GAP = 2


def model_input(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` on the model's device and in its floating-point dtype (e.g. 16-true)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return images
    dtype = parameter.dtype if parameter.is_floating_point() else images.dtype
    return images.to(device=parameter.device, dtype=dtype)


@torch.no_grad()
def predict_classes(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Arg-max classes ``(B, H, W)`` on CPU, in eval mode; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        logits = model(model_input(model, images))
    finally:
        model.train(was_training)
    return class_indices(logits).cpu()


def image_grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Tile equally sized ``(H, W, 3)`` uint8 arrays into rows and columns, on white."""
    height, width = rows[0][0].shape[:2]
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    grid = np.full(
        (n_rows * (height + GAP) - GAP, n_cols * (width + GAP) - GAP, 3), 255, dtype=np.uint8
    )
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = i * (height + GAP), j * (width + GAP)
            grid[y : y + height, x : x + width] = tile
    return grid


class ImageSamples(DrawsOnCadence):
    """After validations, logs the first ``n_samples`` validation samples as a grid.

    On the epochs of ``cadence`` (every epoch by default), and the final model at fit end if
    the last validation was skipped.

    One row per sample: the image (``display_bands``, default the first three bands, or the
    first as grey), the true mask, the prediction; masks in the run's class colours
    (``palette``: ``output_setup.class_colors`` as the trainer passes them, the same colours as
    the maps and the report) or else :func:`class_palette`'s, ignored pixels black. Runs on
    global rank 0, never in the sanity check, and only when the trainer has a logger that
    takes images (TensorBoard, W&B: see :mod:`landseg.loggers.registry`); the grid goes to
    each, in its val phase.
    """

    def __init__(
        self,
        n_samples: int = 4,
        cadence: VisualCadence | None = None,
        display_bands: Sequence[int] | None = None,
        palette: np.ndarray | None = None,
    ):
        if n_samples < 1:
            raise ValueError("n_samples must be >= 1")
        super().__init__(cadence)
        self.n_samples = n_samples
        self.display_bands = tuple(display_bands) if display_bands is not None else None
        self.palette = palette
        self._samples: tuple[torch.Tensor, torch.Tensor] | None = None
        self._no_samples = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.should_draw(trainer):
            with self.drawing():
                self.draw_final(trainer, pl_module)

    def draw_final(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The grid of the module as it is now (the final model at fit end)."""
        writers = image_writers_of(trainer.loggers)
        samples = self._fixed_samples(trainer) if writers else None
        if not writers or samples is None:
            return
        images, masks = samples
        task = segmentation_module(pl_module)
        predictions = predict_classes(task.model, images)
        labels = task.class_labels
        n_classes = len(labels) if labels else int(max(masks.max(), predictions.max())) + 1
        palette = self.palette if self.palette is not None else class_palette(n_classes)
        rows = [
            [
                display_image(image.float().numpy(), self.display_bands),
                colorize(mask.numpy(), palette),
                colorize(prediction.numpy(), palette),
            ]
            for image, mask, prediction in zip(images, masks, predictions, strict=True)
        ]
        grid = image_grid(rows)
        for write in writers:
            write("val", "samples/image_mask_prediction", grid, logger_step(trainer))

    def _fixed_samples(self, trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first samples of the validation dataset, read once and kept on CPU."""
        if self._samples is None and not self._no_samples:
            datamodule = getattr(trainer, "datamodule", None)
            dataset = getattr(datamodule, "val_dataset", None)
            if dataset is None or len(dataset) == 0:
                log.warning("no validation dataset on the datamodule: no image samples logged")
                self._no_samples = True
                return None
            samples = [dataset[i] for i in range(min(self.n_samples, len(dataset)))]
            images = torch.stack([torch.as_tensor(s["image"]) for s in samples])
            masks = torch.stack([torch.as_tensor(s["mask"]) for s in samples])
            self._samples = (images, masks)
        return self._samples
