"""A trained network in other formats (``train_setup.export_checkpoint``): pth, torchscript.

Every file is written atomically and loads without landseg: ``torch.load(weights_only=True)``
for ``.pth``, ``torch.jit.load`` for TorchScript.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from landseg.io import atomic_path
from landseg.registry import unknown_name_message


def save_torch(obj: Any, destination: Path) -> None:
    with atomic_path(destination) as tmp:
        torch.save(obj, tmp)


#: The formats of ``train_setup.export_checkpoint``.
EXPORT_FORMATS = ("pth", "torchscript")


def export_formats(value: str | list[str] | None) -> list[str]:
    """``export_checkpoint`` as a list of format names (``.pth`` read as ``pth``)."""
    names = [value] if isinstance(value, str) else list(value or [])
    return [name.lower().lstrip(".") for name in names]


def export_problems(value: str | list[str] | None) -> list[str]:
    return [
        "train_setup.export_checkpoint: "
        + unknown_name_message("export format", name, list(EXPORT_FORMATS))
        for name in export_formats(value)
        if name not in EXPORT_FORMATS
    ]


def export_model(network: torch.nn.Module, in_channels: int, fmt: str, stem: Path) -> Path:
    """Write ``network`` in an extra format (``export_checkpoint``); returns the file."""
    model = network.eval().cpu()
    if fmt == "pth":
        path = stem.with_suffix(".pth")
        save_torch(model.state_dict(), path)
        return path
    if fmt == "torchscript":
        path = stem.with_suffix(".torchscript.pt")
        example = torch.zeros(1, in_channels, 64, 64)
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        with atomic_path(path) as tmp:
            traced.save(str(tmp))
        return path
    raise ValueError(f"unknown export format {fmt}")
