"""Which windows of a scene row one split may use: its ``windows`` cell (cross-validation).

A cross-validation job on scenes with spatial blocks (docs/scenes.md, "Cross-validation")
cuts each scene's grid into blocks, so one scene serves several splits of a task. Its task
CSV files then carry, per scene row, a ``windows`` column holding JSON::

    {"grid": [[row, col], ...], "keep_out": [[left, bottom, right, top, margin], ...]}

* ``grid``: the top-left pixels of the scene's grid windows this split reads (validation,
  test, and training without ``samples_per_epoch``); the other grid windows are skipped.
  Each listed window keeps the pixels it owns in the *whole* grid, so a pixel is counted in
  exactly one window across splits.
* ``keep_out``: rectangles in map units (the scene's CRS). A random training window is never
  drawn where its footprint overlaps one of them or lies closer than its ``margin`` to it
  (the distance between two rectangles, 0 when they touch): such a proposal is drawn again
  (:data:`MAX_KEEP_OUT_TRIES` at most), so no pixel of a kept-out area ever enters training,
  not even as unlabelled context.

Without the cell (every ordinary scene row) nothing is restricted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from affine import Affine

from landseg.core.errors import DataError
from landseg.data.csvfiles import SamplePair

#: The column of a scene row holding its limits.
COLUMN = "windows"
#: Proposals of one random window that may fall in a kept-out area before it is an error.
MAX_KEEP_OUT_TRIES = 10_000


@dataclass(frozen=True)
class WindowLimits:
    """The grid windows a split reads and the areas its random windows keep out of."""

    grid: frozenset[tuple[int, int]] | None
    keep_out: np.ndarray  # (n, 5): left, bottom, right, top, margin in map units

    def to_cell(self) -> str:
        """The JSON text of the ``windows`` cell (compact, stable: sorted grid)."""
        grid = None if self.grid is None else sorted(list(w) for w in self.grid)
        return json.dumps({"grid": grid, "keep_out": self.keep_out.tolist()}, separators=(",", ":"))

    def allows(self, bounds: tuple[float, float, float, float]) -> bool:
        """Whether a window with this footprint (left, bottom, right, top) may be drawn."""
        if not len(self.keep_out):
            return True
        return not bool(touches(np.asarray([bounds], dtype=np.float64), self.keep_out).any())


def touches(boxes: np.ndarray, keep_out: np.ndarray) -> np.ndarray:
    """(n,) which ``boxes`` (n, 4) overlap a kept-out rectangle or lie closer than its margin."""
    a, b = boxes[:, None, :], keep_out[None, :, :]
    dx = np.maximum(np.maximum(b[..., 0] - a[..., 2], a[..., 0] - b[..., 2]), 0)
    dy = np.maximum(np.maximum(b[..., 1] - a[..., 3], a[..., 1] - b[..., 3]), 0)
    overlap = (
        (a[..., 0] < b[..., 2])
        & (b[..., 0] < a[..., 2])
        & (a[..., 1] < b[..., 3])
        & (b[..., 1] < a[..., 3])
    )
    return (overlap | (np.hypot(dx, dy) < b[..., 4])).any(axis=1)


def window_bounds(
    transform: Affine, row: int, col: int, height: int, width: int
) -> tuple[float, float, float, float]:
    """The footprint (left, bottom, right, top) of a window of a north-up scene."""
    xs, ys = zip(
        *(transform @ (c, r) for r, c in ((row, col), (row + height, col + width))), strict=True
    )
    return (min(xs), min(ys), max(xs), max(ys))


def limits_of(pair: SamplePair) -> WindowLimits | None:
    """The row's limits from its ``windows`` cell, or None without one; DataError naming it."""
    text = pair.extra.get(COLUMN, "").strip()
    if not text:
        return None
    try:
        data = json.loads(text)
        grid = data.get("grid")
        keep_out = np.asarray(data.get("keep_out") or [], dtype=np.float64).reshape(-1, 5)
        cells = None if grid is None else frozenset((int(r), int(c)) for r, c in grid)
    except (ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{pair.where()}: unreadable {COLUMN} cell ({error})") from error
    return WindowLimits(cells, keep_out)
