"""Test-time augmentation: exact transforms, the average of the transformed predictions, and
whole-scene prediction through the wrapper (an untrained lightunet and a 1x1 convolution)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from landseg.core.errors import LandsegError
from landseg.inference.scene import (
    LoadedModel,
    PredictOptions,
    Tiling,
    predict_array,
    predict_scene,
)
from landseg.inference.tta import TTA_MODES, TTAModel, tta_problems, tta_transforms, with_tta

LABELS = ["water", "vegetation", "bare soil", "building"]
Pair = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def rot(k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.rot90(a, k, axes=(-2, -1))


def lr(a: np.ndarray) -> np.ndarray:
    return a[..., ::-1]


def ud(a: np.ndarray) -> np.ndarray:
    return a[..., ::-1, :]


#: Each mode's (forward, inverse) pairs, written independently of tta.py (and, for d4, composed
#: in the other order: flip first, then rotate; the same 8 elements of the group).
MANUAL: dict[str, list[Pair]] = {
    "flips": [
        (lambda a: a, lambda a: a),
        (lr, lr),
        (ud, ud),
        (lambda a: lr(ud(a)), lambda a: ud(lr(a))),
    ],
    "rot90": [(rot(k), rot(-k)) for k in range(4)],
    "d4": [(rot(k), rot(-k)) for k in range(4)]
    + [((lambda a, k=k: rot(k)(lr(a))), (lambda a, k=k: lr(rot(-k)(a)))) for k in range(4)],
}


@pytest.fixture(scope="module")
def model(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """An untrained lightunet (4 bands, 4 classes, size multiple 16), seeded, in eval mode."""
    from landseg.config.load import validate_config
    from landseg.tasks.segmentation import SegmentationTask

    raw = json.loads((demo_dir / "demo.json").read_text())
    raw["output_setup"]["output_folder"] = str(tmp_path_factory.mktemp("tta") / "runs")
    config = validate_config(raw, demo_dir / "demo.json").model_dump(mode="json")
    torch.manual_seed(0)
    return LoadedModel.from_task(SegmentationTask(config, 4, LABELS).eval())


@pytest.fixture(scope="module")
def pointwise(model: LoadedModel) -> LoadedModel:
    """The same, with a 1x1 convolution as network: equivariant under every transform."""
    torch.manual_seed(1)
    return dataclasses.replace(model, model=torch.nn.Conv2d(4, 4, 1).eval())


def tiles(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4, height, width)).astype(np.float32)


# ---------------------------------------------------------------------------- transforms


def test_modes_and_their_validation() -> None:
    assert TTA_MODES == ("d4", "flips", "rot90")
    assert [len(tta_transforms(m)) for m in TTA_MODES] == [8, 4, 4]
    assert all(tta_problems(m) == [] for m in TTA_MODES)
    (line,) = tta_problems("D4x")
    assert "--tta" in line and "did you mean 'd4'" in line and "flips" in line
    with pytest.raises(ValueError, match="unknown TTA mode 'rot45'"):
        TTAModel(object(), "rot45")


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 5, 12), (1, 1, 12, 5)])
def test_inverse_transforms_are_exact(mode: str, shape: tuple[int, ...]) -> None:
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    for transform in tta_transforms(mode):
        moved = transform.apply(x)
        swapped = transform.quarter_turns % 2 == 1
        assert moved.shape == ((*shape[:2], shape[3], shape[2]) if swapped else shape)
        assert np.array_equal(transform.invert(moved), x)
        assert np.array_equal(transform.apply(transform.invert(moved)), moved)


@pytest.mark.parametrize("mode", TTA_MODES)
def test_each_mode_is_its_set_of_transforms(mode: str) -> None:
    """The same arrays as the hand-written transforms, each once (a group: no duplicate)."""
    x = np.arange(2 * 7 * 7, dtype=np.float32).reshape(1, 2, 7, 7)
    mine = sorted(t.apply(x).tobytes() for t in tta_transforms(mode))
    manual = sorted(forward(x).tobytes() for forward, _ in MANUAL[mode])
    assert mine == manual and len(set(mine)) == len(mine)
    d4 = {t.apply(x).tobytes() for t in tta_transforms("d4")}
    assert set(mine) <= d4


# ---------------------------------------------------------------------------- probabilities


def manual_mean(model: LoadedModel, x: np.ndarray, mode: str, batch_size: int) -> np.ndarray:
    pairs = MANUAL[mode]
    outs = [inverse(model.tile_probabilities(forward(x), batch_size)) for forward, inverse in pairs]
    return np.mean(np.stack(outs), axis=0, dtype=np.float64)


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("size", [(32, 32), (20, 36)])
def test_tta_is_the_mean_of_the_transformed_predictions(
    model: LoadedModel, mode: str, size: tuple[int, int]
) -> None:
    """Non-square tiles too: rotated, padded to 16 by the wrapped model, cropped, rotated back."""
    x = tiles(3, *size)
    before = x.copy()
    out = TTAModel(model, mode).tile_probabilities(x, batch_size=2)
    assert out.shape == (3, 4, *size) and out.dtype == np.float32
    assert np.array_equal(x, before)  # the input is left alone
    assert np.abs(out - manual_mean(model, x, mode, 2)).max() < 1e-6
    assert np.allclose(out.sum(axis=1), 1, atol=1e-5)
    # the untrained lightunet is not equivariant: TTA changes its output
    assert np.abs(out - model.tile_probabilities(x, 2)).max() > 1e-3


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("size", [(32, 32), (20, 36), (13, 7)])
def test_equivariant_model_is_unchanged(
    pointwise: LoadedModel, mode: str, size: tuple[int, int]
) -> None:
    x = tiles(3, *size, seed=2)
    plain = pointwise.tile_probabilities(x, 8)
    assert np.abs(TTAModel(pointwise, mode).tile_probabilities(x, 8) - plain).max() < 1e-6


def test_one_call_of_the_model_per_transform(model: LoadedModel) -> None:
    calls: list[tuple[tuple[int, ...], int]] = []

    class Counting:
        def tile_probabilities(self, x: np.ndarray, batch_size: int) -> np.ndarray:
            calls.append((x.shape, batch_size))
            return model.tile_probabilities(x, batch_size)

    TTAModel(Counting(), "d4").tile_probabilities(tiles(5, 16, 48), 3)
    assert calls == [((5, 4, 16, 48), 3), ((5, 4, 48, 16), 3)] * 4


# ---------------------------------------------------------------------------- the wrapper


def test_every_other_attribute_is_the_wrapped_models(model: LoadedModel) -> None:
    wrapped = TTAModel(model, "flips")
    for name in ("class_labels", "in_channels", "size_multiple", "config", "device", "model"):
        assert getattr(wrapped, name) is getattr(model, name)
    assert (wrapped.n_classes, wrapped.checkpoint, wrapped.run) == (4, None, None)
    assert wrapped.mode == "flips" and wrapped.wrapped is model
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute
    with pytest.raises(LandsegError, match="16 px multiple"):
        Tiling(8, 0).check_model(wrapped)
    assert copy.copy(wrapped).wrapped is model  # no recursion on a half-built instance
    assert with_tta(model, None) is model
    assert isinstance(with_tta(model, "rot90"), TTAModel)


def test_predict_array_end_to_end(model: LoadedModel, pointwise: LoadedModel) -> None:
    image = tiles(1, 70, 90, seed=3)[0]
    tiling = Tiling(32, 16, batch_size=5)
    tta = predict_array(TTAModel(model, "d4"), image, tiling)
    plain = predict_array(model, image, tiling)
    assert tta.shape == plain.shape == (4, 70, 90)
    assert np.isfinite(tta).all() and np.allclose(tta.sum(axis=0), 1, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-3
    # an equivariant network: the blended scene is the same with and without TTA
    same = predict_array(TTAModel(pointwise, "d4"), image, tiling)
    assert np.abs(same - predict_array(pointwise, image, tiling)).max() < 1e-6
    # a scene smaller than a tile, not square: one pass, rotated through the model
    small = image[:, :20, :28]
    one = predict_array(TTAModel(model, "d4"), small, Tiling(64, 16))
    assert np.abs(one - manual_mean(model, small[None], "d4", 8)[0]).max() < 1e-6


def test_predict_scene_writes_through_the_wrapper(model: LoadedModel, tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 250, (4, 50, 40), dtype=np.uint8)
    pixels[:, :3, :3] = 255
    source = tmp_path / "scene.tif"
    profile = {
        "driver": "GTiff",
        "count": 4,
        "height": 50,
        "width": 40,
        "dtype": "uint8",
        "crs": "EPSG:32631",
        "transform": Affine(0.5, 0.0, 640_003.0, 0.0, -0.5, 6_860_001.0),
        "nodata": 255,
    }
    with rasterio.open(source, "w", **profile) as dst:
        dst.write(pixels)
    options = PredictOptions(Tiling(32, 16), "float32")
    out = predict_scene(TTAModel(model, "rot90"), source, tmp_path / "out" / "scene.tif", options)
    with rasterio.open(out) as src:
        probs = src.read()
        assert json.loads(src.tags()["landseg_class_labels"]) == LABELS
    assert probs.shape == (4, 50, 40) and np.isnan(probs[:, :3, :3]).all()
    assert np.allclose(probs[:, 3:, 3:].sum(axis=0), 1, atol=1e-5)
