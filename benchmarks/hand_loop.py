"""The hand-written PyTorch reference for ``landseg train``: one process, nothing of landseg
or Lightning imported (torch, numpy, rasterio, segmentation_models_pytorch and the standard
library, through :mod:`benchmarks.plain`).

It does what ``landseg train`` does in the configuration it is compared with, and nothing
more, so that a ratio of whole processes measures what landseg adds:

* the network: ``model_name: resnetN`` as landseg builds it (``landseg.models.factory.
  resnet_unet``): smp's ``Unet`` with the ``resnetN`` encoder, random weights
  (``encoder_weights=None``), decoder channels (256, 128, 64, 32, 16), bilinear upsampling;
* Adam at the config's ``lr``, with torch's fused step as landseg's default optimiser takes
  (``"fused": false`` in the spec for torch's default ``foreach`` step);
* cross-entropy over the labelled pixels (ignore index -1: landseg's ``loss: ce`` without
  class weights);
* tiles read with rasterio on every read (landseg's ``data_source.cache: none``), uint8 / 255
  (landseg's scaling of uint8 images, no mean/std), the one-hot mask to a class index (-1
  where no band is set);
* a DataLoader with the same batch size and workers, persistent for train and val (as
  landseg's), shuffled for train only;
* optionally the train augmentations landseg names ``rotation90`` and ``radiometry``, the same
  operations on the same arrays (numpy rot90; gamma, torchvision's ``adjust_hue`` and Gaussian
  noise, each with probability 0.5, clipped), so they cost what landseg's cost per sample;
* a validation pass (loss and confusion matrix -> mIoU) once an epoch, or every
  ``batches // val_per_epoch`` batches (landseg's ``val_check_interval: 0.5`` is 2).

Float32 throughout. It prints one JSON line of ``time.time()`` stamps: ``started`` (this
module's first line, after the interpreter's start), imports done, network built, first
training step, each validation's end, each epoch's end, and ``finished`` (before the exit).

    python -m benchmarks.hand_loop --spec SPEC.json

The spec (written by :mod:`benchmarks.bench_process`): ``model``, ``in_channels``,
``classes``, ``train`` and ``val`` (lists of [image, mask] paths), ``batch_size``,
``workers``, ``epochs``, ``lr``, ``seed``, and optionally ``augment`` (names),
``val_per_epoch`` (1), ``fused`` (true), ``threads`` (torch's default).
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports: they are part of the process's fixed cost

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from benchmarks.plain import IGNORE, confusion, mean_iou, onehot_to_index, read_pair  # noqa: E402

IMPORTED = time.time()

#: landseg's radiometry ranges (landseg.data.augmentations), copied: this module imports no
#: landseg.
GAMMA_RANGE = (0.5, 2.2)
HUE_SHIFT_RANGE = (0.0, 0.066)
NOISE_VARIANCE_RANGE = (0.001, 0.01)
EFFECT_PROBABILITY = 0.5
AUGMENTATIONS = ("rotation90", "radiometry")


def build_network(model: str, in_channels: int, classes: int) -> torch.nn.Module:
    """``resnetN`` as landseg builds it: smp U-Net, ResNet-N encoder, random weights."""
    if not model.startswith("resnet"):
        raise SystemExit(f"hand loop: model {model!r}: only resnet18..resnet152 are written here")
    return smp.Unet(
        encoder_name=model,
        encoder_weights=None,
        in_channels=in_channels,
        classes=classes,
        decoder_channels=(256, 128, 64, 32, 16),
        decoder_interpolation="bilinear",
    )


def rotation90(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple:
    k = int(rng.integers(4)) if image.shape[1] == image.shape[2] else 2 * int(rng.integers(2))
    return (
        np.ascontiguousarray(np.rot90(image, k, axes=(1, 2))),
        np.ascontiguousarray(np.rot90(mask, k)),
    )


def radiometry(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple:
    from torchvision.transforms.v2 import functional as tvf  # smp imports torchvision already

    apply_gamma, apply_hue, apply_noise = rng.random(3) < EFFECT_PROBABILITY
    gamma = rng.uniform(*GAMMA_RANGE)
    hue_shift = rng.uniform(*HUE_SHIFT_RANGE)
    noise_std = np.sqrt(rng.uniform(*NOISE_VARIANCE_RANGE))
    out = np.clip(image, 0.0, 1.0)
    if apply_gamma:
        out = out ** np.float32(gamma)
    if apply_hue and out.shape[0] >= 3:
        rgb = tvf.adjust_hue(torch.from_numpy(np.ascontiguousarray(out[:3])), float(hue_shift))
        out = np.concatenate([rgb.numpy(), out[3:]], axis=0)
    if apply_noise:
        out = out + rng.normal(0.0, noise_std, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask


class Tiles(Dataset):
    """rasterio on every read, uint8 / 255, one-hot -> class index, then the augmentations."""

    def __init__(self, rows: list[tuple[Path, Path]], augment: list[str]):
        unknown = sorted(set(augment) - set(AUGMENTATIONS))
        if unknown:
            raise SystemExit(f"hand loop: unknown augmentations {unknown}; known {AUGMENTATIONS}")
        self.rows = rows
        self.augment = [rotation90 if name == "rotation90" else radiometry for name in augment]
        self.rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, onehot = read_pair(*self.rows[index])
        image = pixels.astype(np.float32) / np.float32(255)
        mask = onehot_to_index(onehot)
        if self.augment:
            if self.rng is None:  # one per worker, seeded by torch's per-worker seed
                self.rng = np.random.default_rng(torch.initial_seed())
            for augment in self.augment:
                image, mask = augment(image, mask, self.rng)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(mask)


def loader(rows: list, spec: dict[str, Any], *, train: bool) -> DataLoader:
    workers = int(spec["workers"])
    return DataLoader(
        Tiles([(Path(a), Path(b)) for a, b in rows], spec.get("augment", []) if train else []),
        batch_size=int(spec["batch_size"]),
        shuffle=train,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(int(spec["seed"])) if train else None,
    )


def validate(
    model: torch.nn.Module, val: DataLoader, criterion: torch.nn.Module, classes: int
) -> float:
    """The val loss and the confusion matrix of every batch; returns the mIoU."""
    model.eval()
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    total, count = 0.0, 0
    with torch.inference_mode():  # as Lightning's validation
        for image, mask in val:
            logits = model(image)
            total += float(criterion(logits, mask)) * image.shape[0]
            count += image.shape[0]
            matrix += confusion(logits.argmax(1), mask, classes)
    model.train()
    return mean_iou(matrix)


def fit(spec: dict[str, Any]) -> dict[str, Any]:
    """Train as the spec says; the stamps of the run."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    classes = int(spec["classes"])
    model = build_network(spec["model"], int(spec["in_channels"]), classes)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(spec["lr"]), fused=bool(spec.get("fused", True)) or None
    )
    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    train, val = loader(spec["train"], spec, train=True), loader(spec["val"], spec, train=False)
    built = time.time()
    n_batches = len(train)
    per_epoch = max(1, int(spec.get("val_per_epoch", 1)))
    # validate every ``every`` batches of the epoch: Lightning's rule for val_check_interval
    # 1 / per_epoch (max(1, int(batches * interval)); 13 batches at 0.5 validate after 6 and 12)
    every = max(1, int(n_batches / per_epoch))
    first_step: float | None = None
    val_ends: list[float] = []
    epoch_ends: list[float] = []
    scores: list[float] = []
    model.train()
    for _ in range(int(spec["epochs"])):
        for batch, (image, mask) in enumerate(train, start=1):
            if first_step is None:
                first_step = time.time()
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(image), mask)
            loss.backward()
            optimizer.step()
            if batch % every == 0:
                scores.append(validate(model, val, criterion, classes))
                val_ends.append(time.time())
        epoch_ends.append(time.time())
    # end the persistent workers now, as landseg does after its fit (shutdown_workers, the
    # same torch call), not in the interpreter's teardown
    for done in (train, val):
        iterator = getattr(done, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
    workers_ended = time.time()
    return {
        "started": STARTED,
        "imported": IMPORTED,
        "built": built,
        "first_step": first_step,
        "val_ends": val_ends,
        "epoch_ends": epoch_ends,
        "workers_ended": workers_ended,
        "val_miou": [round(s, 4) for s in scores],
        "finished": time.time(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the run's JSON spec")
    args = parser.parse_args()
    stamps = fit(json.loads(args.spec.read_text()))
    print(json.dumps(stamps))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
