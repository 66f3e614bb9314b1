"""Test-time augmentation: predict transformed copies of each tile, undo, average.

A :class:`TTAModel` wraps a loaded model (:class:`landseg.inference.scene.LoadedModel`, or
anything with its ``tile_probabilities``) and has the same interface: for every transform of
its mode it transforms the tiles, runs the wrapped model, applies the inverse transform to
the probabilities and averages them (probabilities, before any argmax). Every other
attribute (``class_labels``, ``n_classes``, ``in_channels``, ``size_multiple``, ``config``,
``device``, ``checkpoint``, ...) is the wrapped model's, so whole-scene prediction takes
``TTAModel(model, "d4")`` wherever it takes ``model``: tiling, blending, nodata and the
output raster are unchanged, and TTA costs one pass of the model per transform.

Modes (:data:`TTA_MODES`):

- ``d4``: the 8 symmetries of the square: the 4 rotations by multiples of 90 degrees, each
  also flipped left-right;
- ``flips``: identity, left-right, up-down, both (4);
- ``rot90``: the 4 rotations (identity included).

The transforms permute pixels (``np.rot90``, ``np.flip``), so their inverses are exact. A
rotation by 90 degrees swaps height and width: a tile that is not square (a whole scene
smaller than a tile is predicted in one pass, at its own size) goes through the model
rotated, padded to the model's size multiple by the wrapped model as any tile is, then is
cropped and rotated back.

This module imports only ``landseg.core.registry`` (layer 0) and not ``scene``, so ``scene`` and
``split`` may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from landseg.core.registry import unknown_name_message

#: The TTA modes, by name.
TTA_MODES = ("d4", "flips", "rot90")


class TileModel(Protocol):
    """What TTA needs of a model: ``(N, C, h, w)`` tiles -> ``(N, K, h, w)`` probabilities."""

    def tile_probabilities(self, tiles: np.ndarray, batch_size: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Transform:
    """Rotate the last two axes by ``quarter_turns`` x 90 degrees, then flip left-right if ``flip``.

    Rotations follow ``np.rot90`` (counter-clockwise, from the row axis towards the column
    axis). Arrays are ``(..., h, w)``; the result is a view.
    """

    name: str
    quarter_turns: int = 0
    flip: bool = False

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.rot90(array, self.quarter_turns, axes=(-2, -1))
        return np.flip(out, axis=-1) if self.flip else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        out = np.flip(array, axis=-1) if self.flip else array
        return np.rot90(out, -self.quarter_turns, axes=(-2, -1))


IDENTITY = Transform("identity")
_ROTATIONS = (IDENTITY, Transform("rot90", 1), Transform("rot180", 2), Transform("rot270", 3))
_TRANSFORMS: dict[str, tuple[Transform, ...]] = {
    "d4": (
        *_ROTATIONS,
        Transform("flip_lr", 0, True),
        Transform("rot90_flip_lr", 1, True),  # the transpose across the anti-diagonal
        Transform("rot180_flip_lr", 2, True),  # the up-down flip
        Transform("rot270_flip_lr", 3, True),  # the transpose
    ),
    # up-down = rot180 then left-right; both = rot180
    "flips": (
        IDENTITY,
        Transform("flip_lr", 0, True),
        Transform("flip_ud", 2, True),
        Transform("flip_both", 2),
    ),
    "rot90": _ROTATIONS,
}


def tta_problems(name: str) -> list[str]:
    """Why ``name`` is not a TTA mode (one line), or nothing."""
    if name in TTA_MODES:
        return []
    return [f"--tta: {unknown_name_message('TTA mode', name, list(TTA_MODES))}"]


def tta_transforms(name: str) -> tuple[Transform, ...]:
    """The transforms of a TTA mode (ValueError for an unknown name)."""
    problems = tta_problems(name)
    if problems:
        raise ValueError(problems[0])
    return _TRANSFORMS[name]


class TTAModel:
    """``model`` predicting with test-time augmentation ``mode`` (one of :data:`TTA_MODES`).

    Only :meth:`tile_probabilities` differs from the wrapped model; reading any other
    attribute reads the wrapped model's.
    """

    def __init__(self, model: TileModel, mode: str = "d4") -> None:
        self.wrapped = model
        self.mode = mode
        self.transforms: Sequence[Transform] = tta_transforms(mode)

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes the wrapper lacks. ``wrapped`` itself is looked up in
        # __dict__ so that a half-built instance (copy, pickle) does not recurse.
        if name == "wrapped" or "wrapped" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["wrapped"], name)

    def __repr__(self) -> str:
        return f"TTAModel({self.wrapped!r}, {self.mode!r})"

    def tile_probabilities(self, tiles: np.ndarray, batch_size: int) -> np.ndarray:
        """Mean over the transforms of the wrapped model's probabilities, transformed back.

        ``tiles`` ``(N, C, h, w)`` -> ``(N, K, h, w)`` float32; ``h != w`` is fine. Each
        transform is one call of the wrapped model on all ``N`` tiles, ``batch_size`` at a time.
        """
        total: np.ndarray | None = None
        for transform in self.transforms:
            probs = transform.invert(
                self.wrapped.tile_probabilities(transform.apply(tiles), batch_size)
            )
            if total is None:
                total = np.array(probs, dtype=np.float32)  # a contiguous copy
            else:
                total += probs
        assert total is not None  # every mode has at least one transform
        total /= np.float32(len(self.transforms))
        return total


M = TypeVar("M", bound=TileModel)


def with_tta(model: M, mode: str | None) -> M:
    """``model`` itself when ``mode`` is None, else ``TTAModel(model, mode)``.

    Typed as the model it wraps (the wrapper reads every attribute from it), so a caller
    that expects a ``LoadedModel`` keeps its type: ``model = with_tta(LoadedModel.load(...),
    args.tta)``.
    """
    if mode is None:
        return model
    return cast(M, TTAModel(model, mode))
