"""Augmentations keep image and mask aligned, are seeded, and radiometry leaves masks alone."""

from __future__ import annotations

import numpy as np
import pytest

from landseg.data.augmentations import AUGMENTATIONS, build_augmentations
from landseg.data.summary import IGNORE_INDEX


def _aligned(size: int = 32, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An image whose band 0 equals the mask (in blocks), bands 1-2 random."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, classes, (size // 8, size // 8))
    mask = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.int64)
    mask[0, 0] = IGNORE_INDEX
    image = rng.random((3, size, size)).astype(np.float32)
    image[0] = mask
    return image, mask


def test_registry_names() -> None:
    assert AUGMENTATIONS.names() == ["radiometry", "rotation", "rotation90"]
    with pytest.raises(KeyError, match="did you mean 'rotation90'"):
        build_augmentations(["rotation9O"])


def test_rotation90_is_exact_and_aligned() -> None:
    image, mask = _aligned()
    seen = set()
    for seed in range(12):
        out_image, out_mask = AUGMENTATIONS.get("rotation90")(
            image, mask, np.random.default_rng(seed)
        )
        k = next(k for k in range(4) if np.array_equal(np.rot90(mask, k), out_mask))
        seen.add(k)
        np.testing.assert_array_equal(out_image, np.rot90(image, k, axes=(1, 2)))
        assert out_image.flags.c_contiguous and out_mask.dtype == np.int64
    assert seen == {0, 1, 2, 3}


def test_rotation90_keeps_non_square_shapes() -> None:
    image, mask = np.zeros((2, 4, 6), np.float32), np.zeros((4, 6), np.int64)
    for seed in range(8):
        out_image, out_mask = AUGMENTATIONS.get("rotation90")(
            image, mask, np.random.default_rng(seed)
        )
        assert out_image.shape == (2, 4, 6) and out_mask.shape == (4, 6)


def test_rotation_keeps_alignment_and_ignores_outside() -> None:
    image, mask = _aligned()
    out_image, out_mask = AUGMENTATIONS.get("rotation")(image, mask, np.random.default_rng(3))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert out_mask.dtype == np.int64 and out_image.dtype == np.float32
    labelled = out_mask != IGNORE_INDEX
    assert (out_mask == IGNORE_INDEX).sum() > 1  # corners rotated in from outside
    agree = np.isclose(out_image[0][labelled], out_mask[labelled], atol=0.5).mean()
    assert agree > 0.9
    # the mask only holds values it had (nearest neighbour), corners are 0 in the image
    assert set(np.unique(out_mask)) <= set(np.unique(mask))
    assert out_image[:, 0, 0].tolist() == [0.0, 0.0, 0.0] or out_mask[0, 0] != IGNORE_INDEX


def test_radiometry_leaves_mask_and_range() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((4, 16, 16)).astype(np.float32)
    mask = rng.integers(-1, 3, (16, 16))
    changed = 0
    for seed in range(10):
        out_image, out_mask = AUGMENTATIONS.get("radiometry")(
            image, mask, np.random.default_rng(seed)
        )
        assert out_mask is mask
        assert out_image.dtype == np.float32 and out_image.shape == image.shape
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0
        changed += not np.allclose(out_image, image)
    assert changed >= 5


def test_radiometry_on_fewer_than_three_bands() -> None:
    image = np.full((2, 8, 8), 0.5, np.float32)
    for seed in range(6):
        out, _ = AUGMENTATIONS.get("radiometry")(
            image, np.zeros((8, 8), np.int64), np.random.default_rng(seed)
        )
        assert out.shape == (2, 8, 8)


@pytest.mark.parametrize("name", ["rotation90", "rotation", "radiometry"])
def test_same_seed_same_result(name: str) -> None:
    image, mask = _aligned()
    image[0] /= 4
    augment = AUGMENTATIONS.get(name)
    first = augment(image, mask, np.random.default_rng(42))
    second = augment(image, mask, np.random.default_rng(42))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
