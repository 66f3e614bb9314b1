"""Training augmentations (ODEON's train tool, section Augmentation description), by name.

Each is a callable ``(image, mask, rng) -> (image, mask)``: ``image`` is a (C, H, W) float32
array already scaled to 0-1 (before mean/std), ``mask`` an (H, W) int64 array with
:data:`IGNORE_INDEX` for unlabelled pixels. All randomness comes from ``rng``, so a sample's
augmentation is fixed by its seed, whatever process or worker computes it.

torch and torchvision are imported inside the functions that need them, so reading the
registry (e.g. to validate a config) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from landseg.core.registry import Registry, unknown_name_message
from landseg.data.summary import IGNORE_INDEX

Augmentation = Callable[
    [np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]
]

AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")

GAMMA_RANGE = (0.5, 2.2)
HUE_SHIFT_RANGE = (0.0, 0.066)
NOISE_VARIANCE_RANGE = (0.001, 0.01)
EFFECT_PROBABILITY = 0.5


@AUGMENTATIONS.register("rotation90", geometric=True)
def rotation90(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by k x 90 degrees, exactly; only 0 or 180 for non-square patches (shape kept)."""
    k = int(rng.integers(4)) if image.shape[1] == image.shape[2] else 2 * int(rng.integers(2))
    return (
        np.ascontiguousarray(np.rot90(image, k, axes=(1, 2))),
        np.ascontiguousarray(np.rot90(mask, k)),
    )


@AUGMENTATIONS.register("rotation", geometric=True)
def rotation(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by any angle about the centre, keeping the shape.

    The image is resampled bilinearly, the mask by nearest neighbour (classes never blend);
    corners rotated in from outside the patch are 0 in the image and ignored in the mask.
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    angle = float(rng.uniform(0.0, 360.0))
    rotated_image = tvf.rotate(
        torch.from_numpy(image), angle, interpolation=InterpolationMode.BILINEAR, fill=0.0
    )
    rotated_mask = tvf.rotate(
        torch.from_numpy(mask)[None],
        angle,
        interpolation=InterpolationMode.NEAREST,
        fill=float(IGNORE_INDEX),
    )[0]
    return rotated_image.numpy(), rotated_mask.numpy()


@AUGMENTATIONS.register("radiometry", geometric=False)
def radiometry(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma, hue shift and Gaussian noise, each with probability 0.5; the mask is untouched.

    Gamma is drawn in [0.5, 2.2], the hue shift in [0, 0.066] (of a full turn, applied in HSV
    to the first three bands only; skipped for images with fewer bands), the noise variance in
    [0.001, 0.01]. The result is clipped to 0-1.
    """
    apply_gamma, apply_hue, apply_noise = rng.random(3) < EFFECT_PROBABILITY
    gamma = rng.uniform(*GAMMA_RANGE)
    hue_shift = rng.uniform(*HUE_SHIFT_RANGE)
    noise_std = np.sqrt(rng.uniform(*NOISE_VARIANCE_RANGE))

    out = np.clip(image, 0.0, 1.0)
    if apply_gamma:
        out = out ** np.float32(gamma)
    if apply_hue and out.shape[0] >= 3:
        import torch
        from torchvision.transforms.v2 import functional as tvf

        rgb = tvf.adjust_hue(torch.from_numpy(np.ascontiguousarray(out[:3])), float(hue_shift))
        out = np.concatenate([rgb.numpy(), out[3:]], axis=0)
    if apply_noise:
        out = out + rng.normal(0.0, noise_std, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask


def build_augmentations(names: list[str]) -> list[Augmentation]:
    """The augmentations named in the config, in order (KeyError for an unknown name)."""
    return [AUGMENTATIONS.get(name) for name in names]


def augmentation_problems(names: list[str]) -> list[str]:
    """Unknown augmentation names of ``data_source.data_augmentation.train``, one line each."""
    return [
        f"data_source.data_augmentation.train[{i}]: "
        + unknown_name_message("augmentation", name, AUGMENTATIONS.names())
        for i, name in enumerate(names)
        if name not in AUGMENTATIONS
    ]
