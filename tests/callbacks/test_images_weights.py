"""ImageSamples, WeightHistograms and ModelGraph hooks, called on a stand-in trainer.

The full training run with these callbacks is in tests/loggers/test_logging_run.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from landseg.callbacks.cadence import VisualCadence
from landseg.callbacks.images import ImageSamples, image_grid, predict_classes
from landseg.callbacks.weights import ModelGraph, WeightHistograms
from landseg.loggers.tensorboard import PhaseTensorBoardLogger

SIZE = 8


def sample(i: int, bands: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "image": torch.from_numpy(rng.normal(size=(bands, SIZE, SIZE)).astype(np.float32)),
        "mask": torch.from_numpy(rng.integers(-1, 3, size=(SIZE, SIZE))),
        "index": i,
    }


def setup(tmp_path: Path, bands: int = 5, with_tb: bool = True, **trainer: Any) -> tuple:
    """A segmentation module (the attributes of landseg.tasks.interface) and a trainer stand-in."""
    model = torch.nn.Sequential(torch.nn.Conv2d(bands, 3, 1), torch.nn.BatchNorm2d(3))
    module = SimpleNamespace(
        model=model,
        in_channels=bands,
        class_labels=["a", "b", "c"],
        last_confusion=None,
        last_report=None,
    )
    tb = PhaseTensorBoardLogger(tmp_path / "tb") if with_tb else None
    state = {
        "loggers": [tb] if tb else [],
        "is_global_zero": True,
        "sanity_checking": False,
        "current_epoch": 0,
        "global_step": 7,
        "datamodule": SimpleNamespace(val_dataset=[sample(i, bands) for i in range(6)]),
        **trainer,
    }
    return module, SimpleNamespace(**state), tb


def read(folder: Path) -> EventAccumulator:
    guidance = {"images": 0, "histograms": 0}
    return EventAccumulator(str(folder), size_guidance=guidance).Reload()


@pytest.mark.parametrize("bands", [1, 2, 5])
def test_image_samples_grid(tmp_path: Path, bands: int) -> None:
    module, trainer, tb = setup(tmp_path, bands)
    module.model.train()
    callback = ImageSamples(n_samples=3)
    callback.on_validation_end(trainer, module)
    trainer.current_epoch, trainer.global_step = 1, 14
    callback.on_validation_end(trainer, module)
    tb.finalize("success")
    assert module.model.training  # eval only while predicting
    images = read(tmp_path / "tb" / "val").Images("samples/image_mask_prediction")
    assert [image.step for image in images] == [7, 14]
    # 3 rows (samples) x 3 columns (image | mask | prediction), 2-pixel gaps
    assert (images[0].height, images[0].width) == (3 * SIZE + 4, 3 * SIZE + 4)


def test_image_samples_skipped(tmp_path: Path) -> None:
    module, trainer, _ = setup(tmp_path, sanity_checking=True)
    ImageSamples().on_validation_end(trainer, module)
    trainer.sanity_checking, trainer.current_epoch = False, 1
    ImageSamples(cadence=VisualCadence(every_n_epochs=2)).on_validation_end(trainer, module)
    trainer.is_global_zero, trainer.current_epoch = False, 0
    ImageSamples().on_validation_end(trainer, module)
    assert not (tmp_path / "tb").exists()
    module, trainer, _ = setup(tmp_path, with_tb=False)
    ImageSamples().on_validation_end(trainer, module)  # no TensorBoard: nothing to do


def test_image_samples_fixed_across_epochs(tmp_path: Path) -> None:
    module, trainer, tb = setup(tmp_path)
    callback = ImageSamples(n_samples=2)
    callback.on_validation_end(trainer, module)
    trainer.datamodule.val_dataset.reverse()  # a shuffled dataset would not change the samples
    first = callback._samples
    callback.on_validation_end(trainer, module)
    assert callback._samples is first
    tb.finalize("success")


def test_predict_classes_and_grid() -> None:
    model = torch.nn.Conv2d(2, 4, 1).double()  # dtype follows the model (e.g. 16-true)
    classes = predict_classes(model, torch.zeros(3, 2, 5, 5))
    assert classes.shape == (3, 5, 5) and classes.dtype == torch.int64
    tiles = [[np.zeros((2, 3, 3), np.uint8)] * 2, [np.zeros((2, 3, 3), np.uint8)]]
    grid = image_grid(tiles)
    assert grid.shape == (6, 8, 3) and grid[2, 0].tolist() == [255, 255, 255]


def test_weight_histograms(tmp_path: Path) -> None:
    module, trainer, tb = setup(tmp_path)
    with torch.no_grad():
        module.model[0].bias[0] = float("nan")  # a diverged value is left out, not fatal
    WeightHistograms().on_train_epoch_end(trainer, module)
    trainer.current_epoch = 1
    WeightHistograms(VisualCadence(every_n_epochs=2)).on_train_epoch_end(trainer, module)
    tb.finalize("success")
    histograms = read(tmp_path / "tb" / "train")
    assert set(histograms.Tags()["histograms"]) == {"0/weight", "0/bias", "1/weight", "1/bias"}
    assert histograms.Histograms("0/bias")[0].histogram_value.num == 2
    assert len(histograms.Histograms("0/weight")) == 1


def test_model_graph_once_in_eval_mode(tmp_path: Path) -> None:
    module, trainer, tb = setup(tmp_path)
    module.model.train()
    running_mean = module.model[1].running_mean.clone()
    calls: list[int] = []
    module.model.register_forward_hook(lambda *_: calls.append(1))
    callback = ModelGraph(patch_size=SIZE)
    callback.on_fit_start(trainer, module)
    callback.on_fit_start(trainer, module)
    tb.finalize("success")
    assert read(tmp_path / "tb" / "train").Tags()["graph"]
    assert len(calls) == 1  # traced once: no check trace (two more runs, at every run's start)
    assert len(list((tmp_path / "tb" / "train").glob("events.*"))) == 1
    assert module.model.training
    torch.testing.assert_close(module.model[1].running_mean, running_mean)  # no stats update


def test_a_module_that_is_no_segmentation_module_is_refused_with_what_it_lacks(
    tmp_path: Path,
) -> None:
    module, trainer, _ = setup(tmp_path)
    del module.in_channels
    with pytest.raises(TypeError, match="it lacks: in_channels"):
        ModelGraph().on_fit_start(trainer, module)
    assert not (tmp_path / "tb").exists()


def test_image_samples_paint_masks_in_the_runs_class_colours(tmp_path: Path) -> None:
    """The TensorBoard grid uses ``class_colors`` as the maps and the report do."""
    import io

    from matplotlib.image import imread

    module, trainer, tb = setup(tmp_path, bands=3)
    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.uint8)
    ImageSamples(n_samples=2, palette=palette).on_validation_end(trainer, module)
    tb.finalize("success")
    (image,) = read(tmp_path / "tb" / "val").Images("samples/image_mask_prediction")
    pixels = (imread(io.BytesIO(image.encoded_image_string))[..., :3] * 255).round()
    mask_column = pixels[:SIZE, SIZE + 2 : 2 * SIZE + 2].reshape(-1, 3).astype(int)
    allowed = {(10, 20, 30), (40, 50, 60), (70, 80, 90), (0, 0, 0)}  # black: ignored pixels
    assert {tuple(p) for p in mask_column} <= allowed
    assert len({tuple(p) for p in mask_column} - {(0, 0, 0)}) >= 2
