"""Lightning's checkpoint writer, made to write like every other landseg file: whole, on disk,
or not at all.

Lightning's own writer (``TorchCheckpointIO``) stages the file in ``$TMPDIR`` and moves it into
place with fsspec: no ``fsync``, and where ``$TMPDIR`` is another file system (a tmpfs, a
node-local disk on a cluster) the move is a copy that a crash can leave half done under the
final name. This adapter hands the write to the checkpoints' owner
(:func:`landseg.runs.checkpoints.save_checkpoint`: a temporary file next to the destination,
fsynced, then renamed).
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from landseg.runs.checkpoints import save_checkpoint


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
        save_checkpoint(checkpoint, path)
