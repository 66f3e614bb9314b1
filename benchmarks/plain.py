"""What the benchmarks share that imports neither landseg nor Lightning: the Dubai subset, the
bare rasterio reader, the confusion matrix, the minimal hand-written loop and its clock.

The hand-written reference (:mod:`benchmarks.hand_loop`) imports this module alone, so its
process pays for torch, numpy, rasterio and smp, as a user's own script would, and nothing of
the tool it is compared with. :mod:`benchmarks.common` re-exports every name here.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DUBAI = SHARED_DATA / "dubai-aerial"
DUBAI_CLASSES = ["building", "land", "road", "vegetation", "water", "unlabeled"]
IGNORE = -1
Row = tuple[Path, Path]

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # Dubai tiles have no CRS


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def bytecode_env(cache: Path) -> dict[str, str]:
    """The environment for child interpreters, with Python bytecode cached under ``cache``.

    Some environments (this project's sandbox among them) set ``PYTHONDONTWRITEBYTECODE`` and
    ship no ``.pyc`` files, so every new interpreter compiles torch, Lightning and timm again
    (about 25 s of CPU). A normal install caches bytecode; this makes child processes do so
    too, without writing into the virtual environment.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


# ---------------------------------------------------------------------------- the data


def dubai_rows(split: str, count: int) -> list[Row]:
    """``count`` rows of the Dubai ``split`` CSV, evenly spaced through it, absolute paths."""
    csv = DUBAI / f"{split}.csv"
    if not csv.exists():
        raise SystemExit(f"{csv} is absent: these benchmarks need ../shared/data/dubai-aerial")
    rows = [line.split(",") for line in csv.read_text().splitlines() if line.strip()]
    step = max(1, len(rows) // count)
    return [(DUBAI / image, DUBAI / mask) for image, mask in rows[::step][:count]]


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{image},{mask}\n" for image, mask in rows))
    return path


def read_pair(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels: the image's bands and the one-hot mask's bands, as stored."""
    with rasterio.open(image) as src:
        pixels = src.read()
    with rasterio.open(mask) as src:
        onehot = src.read()
    return pixels, onehot


def onehot_to_index(onehot: np.ndarray) -> np.ndarray:
    """Class of every pixel from a one-hot mask, :data:`IGNORE` where no band is set."""
    classes = onehot.argmax(axis=0).astype(np.int64)
    classes[onehot.max(axis=0) == 0] = IGNORE
    return classes


class BareTiles(Dataset):
    """The baseline reader: rasterio, uint8 / 255, one-hot -> index; nothing else."""

    def __init__(self, rows: Sequence[Row]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, onehot = read_pair(*self.rows[index])
        image = torch.from_numpy(pixels.astype(np.float32) / np.float32(255))
        return image, torch.from_numpy(onehot_to_index(onehot))


def bare_loader(
    rows: Sequence[Row], batch_size: int, workers: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    return DataLoader(
        BareTiles(rows),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
    )


# ---------------------------------------------------------------------------- timing


class Clock:
    """Wall and process-CPU time stamps; intervals between consecutive stamps."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.stamps: list[tuple[float, float]] = []
        self.sync = sync

    def stamp(self) -> None:
        if self.sync is not None:
            self.sync()
        self.stamps.append((time.perf_counter(), time.process_time()))

    def intervals(self, skip: int = 1) -> list[tuple[float, float]]:
        """(wall, cpu) of each interval, the first ``skip`` left out (warm-up)."""
        pairs = list(zip(self.stamps, self.stamps[1:], strict=False))[skip:]
        return [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]


# ---------------------------------------------------------------------------- the hand loop


def confusion(prediction: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The (target, prediction) confusion matrix of the labelled pixels, by bincount."""
    valid = target != IGNORE
    codes = target[valid] * n_classes + prediction[valid]
    return torch.bincount(codes, minlength=n_classes**2).reshape(n_classes, n_classes)


def mean_iou(matrix: torch.Tensor) -> float:
    matrix = matrix.double()
    union = matrix.sum(0) + matrix.sum(1) - matrix.diag()
    present = union > 0
    return float((matrix.diag()[present] / union[present]).mean()) if present.any() else 0.0


def hand_fit(
    model: torch.nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    *,
    epochs: int,
    n_classes: int,
    lr: float = 0.001,
    device: str = "cpu",
    bf16: bool = False,
    channels_last: bool = False,
    fused: bool = False,
    clock: Clock | None = None,
) -> list[float]:
    """The minimal PyTorch loop: Adam (torch's default step, or the ``fused`` one),
    cross-entropy (ignore -1), a validation pass with a confusion matrix. Stamps ``clock`` at
    each epoch start and at the end; returns val mIoU."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    scores = []
    for _ in range(epochs):
        if clock is not None:
            clock.stamp()
        model.train()
        for image, mask in train_loader:
            image = image.to(device, non_blocking=True, memory_format=memory)
            mask = mask.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = criterion(model(image), mask)
            loss.backward()
            optimizer.step()
        if val_loader is None:
            continue
        model.eval()
        matrix = torch.zeros(n_classes, n_classes, dtype=torch.long, device=device)
        with torch.no_grad(), autocast:
            for image, mask in val_loader:
                image = image.to(device, non_blocking=True, memory_format=memory)
                mask = mask.to(device, non_blocking=True)
                logits = model(image)
                criterion(logits.float(), mask)
                matrix += confusion(logits.argmax(1), mask, n_classes)
        scores.append(mean_iou(matrix.cpu()))
    if clock is not None:
        clock.stamp()
    return scores
