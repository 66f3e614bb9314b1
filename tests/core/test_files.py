"""Atomic writes: checkpoints through Lightning's plugin slot; the leftovers of killed writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from landseg.core.files import atomic_write_text, remove_stale_temporaries
from landseg.training.checkpoint_io import AtomicCheckpointIO


def test_checkpoint_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "model-last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    assert torch.equal(io.load_checkpoint(path, weights_only=True)["weights"], torch.ones(3))

    def torn_save(obj: object, target: Path) -> None:  # a crash half way through the write
        Path(target).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model-last.ckpt"]


def test_storage_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "a.ckpt", storage_options={"x": 1})


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "history.json", "{}")
    left = [tmp_path / ".history.json.k3j_x.tmp", tmp_path / "checkpoints" / ".m.ckpt.a1.tmp"]
    kept = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / "history.json"]
    for path in left + kept[:2]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == sorted(left)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in left)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_mode_of_a_file_made_with_open(
    umask: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not mkstemp's 0o600: a group sharing runs must read the checkpoints and run.json."""
    import numpy as np

    from landseg.core import files as io

    previous = os.umask(umask)
    io.new_file_mode.cache_clear()
    try:
        atomic_write_text(tmp_path / "run.json", "{}")
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / "m.ckpt")
        io.write_geotiff(tmp_path / "map.tif", np.zeros((1, 4, 4), np.uint8))
        (tmp_path / "old.txt").write_text("x")
        os.chmod(tmp_path / "old.txt", 0o600)
        atomic_write_text(tmp_path / "old.txt", "y")  # replaced: the new file's mode
    finally:
        os.umask(previous)
        io.new_file_mode.cache_clear()
    for name in ("run.json", "m.ckpt", "map.tif", "old.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
