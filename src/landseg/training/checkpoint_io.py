"""Checkpoint files written like every other landseg file: whole, on disk, or not at all.

Lightning's own writer (``TorchCheckpointIO``) stages the file in ``$TMPDIR`` and moves it into
place with fsspec: no ``fsync``, and where ``$TMPDIR`` is another file system (a tmpfs, a
node-local disk on a cluster) the move is a copy that a crash can leave half done under the
final name. Here the temporary file is next to the destination, fsynced, then renamed
(:func:`landseg.core.files.atomic_path`).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from landseg.core.files import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic and durable; loading is unchanged."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got "
                f"{storage_options!r}"
            )
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
