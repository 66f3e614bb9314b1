"""`landseg train` end to end on the tiny demo dataset: every output 004 lists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from landseg.callbacks.run_logger import read_scalars
from landseg.cli.main import main
from landseg.planning.prepare import prepare
from landseg.training.run import train
from tests.helpers import item_key, read_wandb_records, write_config


def run_train(config: dict, tmp_path: Path, *extra: str, name: str = "c.json") -> int:
    return main(["train", "-c", str(write_config(tmp_path / name, config)), *extra])


@pytest.fixture
def small(demo_config: dict) -> dict:
    demo_config["train_setup"].update(epochs=2, batch_size=8, lr=0.01)
    demo_config["output_setup"].update(name_exp_log="exp", version_name="v1", save_top_k=2)
    return demo_config


@pytest.mark.slow
def test_train_writes_every_output(small: dict, tmp_path: Path) -> None:
    small["output_setup"].update(log_learning_rate=True)
    small["train_setup"]["export_checkpoint"] = ["pth", "torchscript"]
    assert run_train(small, tmp_path) == 0
    run = tmp_path / "runs" / "exp" / "v1"
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs_done"] == 2
    assert set(state["csv"]) == {"train", "val", "test"}
    assert "torch" in state["versions"]
    config = json.loads((run / "config.json").read_text())
    assert config["train_setup"]["epochs"] == 2 and config["train_setup"]["lr"] == 0.01
    assert (run / "model_summary.txt").read_text().count("parameters") == 1
    assert (run / "train.log").stat().st_size > 0

    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert sum("-loss-" in n for n in ckpts) == 2 and sum("-miou-" in n for n in ckpts) == 2
    assert "lightunet-last.ckpt" in ckpts
    for path in (run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        assert any(k.startswith("model.") for k in checkpoint["state_dict"])
        assert checkpoint["hyper_parameters"]["class_labels"]  # what predict and report read
        # only the checkpoint a run continues from holds the optimiser's state (disk)
        assert ("optimizer_states" in checkpoint) == path.name.endswith("-last.ckpt"), path
    assert (run / "checkpoints" / "lightunet-best.pth").exists()
    assert (run / "checkpoints" / "lightunet-best.torchscript.pt").exists()

    history = json.loads((run / "history.json").read_text())
    assert list(history) == ["0", "1"]
    entry = history["1"]
    for key in ("cm_macro", "cm_micro", "Overall/IoU", "Average/F1-Score", "water/Precision"):
        assert key in entry
    assert entry["learning rate"] == pytest.approx(0.01) and entry["loss"] > 0
    test = json.loads((run / "history_test.json").read_text())
    assert len(test) == 1 and "-loss-" in next(iter(test.values()))["checkpoint"]

    predictions = sorted((run / "predictions").glob("*.tif"))
    test_rows = (Path(small["data_source"]["test_file"])).read_text().split()
    assert len(predictions) == len(test_rows)
    image = Path(small["data_source"]["test_file"]).parent / test_rows[0].split(",")[0]
    with rasterio.open(image) as src, rasterio.open(run / "predictions" / image.name) as out:
        assert out.crs == src.crs and out.transform == src.transform
        assert out.count == 4 and out.dtypes[0] == "uint8"
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} >= {"train", "val", "test"}

    # each epoch's train row holds that epoch's train mIoU (the value Lightning itself sent to
    # TensorBoard at the epoch's end), not the previous epoch's
    rows = [row for row in read_scalars(run) if row["phase"] == "train"]
    assert [row["epoch"] for row in rows] == [0, 1]
    board = EventAccumulator(str(run / "tensorboard" / "train")).Reload()
    logged = [event.value for event in board.Scalars("miou")]  # (Lightning's step is one less)
    assert logged == [pytest.approx(row["miou"], abs=1e-6) for row in rows]
    assert logged[0] != pytest.approx(logged[1])  # two distinct epochs: a lag would show


@pytest.mark.slow
def test_pth_outputs_wandb_files_and_a_finished_version_never_overwritten(
    small: dict, tmp_path: Path, capsys
) -> None:
    """One 1-epoch run shows three things a user relies on (each its own training before, the
    same 1 epoch each time): ODEON-light's .pth outputs, W&B's offline files in the run folder,
    and that an existing version is never trained over."""
    import wandb

    small["train_setup"]["epochs"] = 1
    small["output_setup"].update(
        model_out_ext=".pth",
        model_filename="mymodel",
        use_wandb=True,
        use_tensorboard=False,
        get_prediction=False,
    )
    try:
        assert run_train(small, tmp_path) == 0
    finally:
        wandb.finish()  # the run file is complete once the run is finished
    run = tmp_path / "runs" / "exp" / "v1"

    # .pth outputs
    weights = torch.load(run / "mymodel.pth", weights_only=True)
    assert any("inc" in k for k in weights)
    assert "state" in torch.load(run / "optimizer_mymodel.pth", weights_only=True)
    assert torch.load(run / "train_mymodel.pth", weights_only=True)["epoch"] == 0
    # ODEON-light: the .pth files are the kept models; `last` alone, to continue the run
    assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] == ["mymodel-last.ckpt"]

    # W&B's offline files
    (offline,) = (run / "wandb").glob("offline-run-*")
    (run_file,) = offline.glob("*.wandb")
    rows = [
        {item_key(item): json.loads(item.value_json) for item in record.history.item}
        for record in read_wandb_records(run_file)
        if record.HasField("history")
    ]
    history = json.loads((run / "history.json").read_text())
    val_rows = [row for row in rows if "val_loss" in row]
    assert len(val_rows) == 1
    assert val_rows[0]["val_loss"] == pytest.approx(history["0"]["loss"], rel=1e-6)
    # the run logger's figures and the image grid reach W&B as images
    keys = {key for row in rows for key in row}
    for tag in ("val/confusion_val", "val/per_class_val", "val/samples/image_mask_prediction"):
        assert f"{tag}/width" in keys, sorted(keys)

    # the existing version is never overwritten
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    small["cross_validation"] = {"group_column": "zone"}  # for landseg cv: train says so
    assert run_train(small, tmp_path) == 2
    err = capsys.readouterr().err
    assert "output_setup.version_name" in err
    assert "cross_validation and search are for landseg cv and landseg tune" in err
    del small["cross_validation"]
    # -c with --resume: refused (a resumed run keeps its own config), nothing touched
    last = next((run / "checkpoints").glob("*-last.ckpt"))
    with pytest.raises(SystemExit) as refused:
        run_train(small, tmp_path, "--resume", str(last))
    assert refused.value.code == 2
    assert "not both" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    # continuing a finished run has nothing left to do, and says so
    small["train_setup"]["continue_training"] = True
    try:
        assert run_train(small, tmp_path) == 0
    finally:
        wandb.finish()
    assert "nothing left to do" in capsys.readouterr().out


@pytest.mark.slow
def test_training_options_reach_lightning(small: dict, tmp_path: Path) -> None:
    """val_check_interval, scheduler, optimiser and early stopping on val_miou."""
    small["train_setup"].update(
        epochs=3,
        val_check_interval=0.5,
        optimizer_config={"optimizer": "sgd", "momentum": 0.9},
        scheduler_config={"scheduler": "cosineannealinglr"},
        early_stopping={"monitor": "val_miou", "patience": 5},
    )
    small["output_setup"].update(use_tensorboard=False, get_prediction=False)
    small["data_source"].pop("test_file")  # the options act while training; no test stage
    assert run_train(small, tmp_path) == 0
    run = tmp_path / "runs" / "exp" / "v1"
    history = json.loads((run / "history.json").read_text())
    assert list(history) == ["0", "1", "2"]
    rates = [entry["learning rate"] for entry in history.values()]
    assert rates[0] == pytest.approx(0.01) and rates[2] < rates[1] < rates[0]  # cosine decay
    # 14 train tiles, batch 8: 2 steps per epoch, validated after each; the last one is kept
    assert [entry["step"] for entry in history.values()] == [2, 4, 6]


class WreckWeights(Callback):
    """Negates the last layer just before epoch ``epoch``'s validation (the logits change sign:
    the likeliest class becomes the least likely): that epoch's val_loss is far worse than the
    one before, so the best checkpoint is not the last."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch != self.epoch:
            return
        last_conv = [m for m in pl_module.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            for weight in last_conv.parameters():
                weight.neg_()


def _network(checkpoint: dict) -> torch.nn.Module:
    from landseg.models.registry import build_model

    network = build_model("lightunet", 4, 4, {})  # the demo: 4 bands, 4 classes
    weights = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k[:6] == "model."
    }
    network.load_state_dict(weights)
    return network.eval()


@pytest.mark.slow
def test_the_best_exports_are_the_best_checkpoint_not_the_last(small: dict, tmp_path: Path) -> None:
    """``-best.pth`` and ``-best.torchscript.pt`` hold the best val_loss epoch's network (epoch
    0 here), not the last epoch's."""
    small["train_setup"]["export_checkpoint"] = ["pth", "torchscript"]
    small["output_setup"].update(use_tensorboard=False, get_prediction=False)
    small["data_source"].pop("test_file")
    small["device_setup"]["precision"] = "32-true"
    prepared = prepare(write_config(tmp_path / "c.json", small), [])
    run = train(prepared.config, prepared.summary, extra_callbacks=[WreckWeights(1)])
    history = json.loads((run / "history.json").read_text())
    assert history["1"]["loss"] > history["0"]["loss"]  # epoch 0 is the best
    checkpoints = run / "checkpoints"
    by_epoch = {}
    for path in checkpoints.glob("*-loss-*.ckpt"):
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        by_epoch[checkpoint["epoch"]] = _network(checkpoint)
    best = by_epoch[0]
    last = _network(torch.load(checkpoints / "lightunet-last.ckpt", weights_only=True))

    exported = torch.load(checkpoints / "lightunet-best.pth", weights_only=True)
    assert exported.keys() == best.state_dict().keys()
    for key, value in best.state_dict().items():
        assert torch.equal(exported[key], value), key
    assert any(not torch.equal(exported[k], v) for k, v in last.state_dict().items())

    scripted = torch.jit.load(checkpoints / "lightunet-best.torchscript.pt")
    image = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want, wrong = scripted(image), best(image), last(image)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-2)


class AutocastProbe(Callback):
    """Records the dtype of the logits and the memory format of the model's first weight."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.dtype, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with trainer.precision_plugin.forward_context():
            logits = pl_module(batch["image"])
        weight = next(p for p in pl_module.model.parameters() if p.ndim == 4)
        channels_last = weight.is_contiguous(memory_format=torch.channels_last)
        self.seen.append((logits.dtype, channels_last))


@pytest.mark.slow
def test_bf16_autocast_and_channels_last(small: dict, tmp_path: Path) -> None:
    small["train_setup"]["epochs"] = 1
    small["output_setup"].update(use_tensorboard=False, get_prediction=False)
    small["device_setup"] = {
        "device": 0,
        "precision": "bf16-mixed",
        "channels_last": True,
        "num_workers": 0,  # not what is tested: 4 loader worker processes per loader cost starts
    }
    probe = AutocastProbe()
    prepared = prepare(write_config(tmp_path / "c.json", small), [])
    checked, summary = prepared.config, prepared.summary
    run = train(checked, summary, extra_callbacks=[probe])
    assert probe.seen and all(seen == (torch.bfloat16, True) for seen in probe.seen)
    history = json.loads((run / "history.json").read_text())
    assert math.isfinite(history["0"]["loss"])
    weights = torch.load(run / "checkpoints" / "lightunet-last.ckpt", weights_only=True)
    assert all(v.dtype == torch.float32 for k, v in weights["state_dict"].items() if "model." in k)


@pytest.mark.slow
def test_get_prediction_writes_class_maps_polygons_and_uses_tta(
    small: dict, tmp_path: Path
) -> None:
    import pyogrio

    small["train_setup"]["epochs"] = 1
    small["output_setup"].update(
        get_prediction=True,
        prediction_output_type="classes",
        prediction_vectors=True,
        prediction_tta="flips",
        use_tensorboard=False,
    )
    small["device_setup"]["precision"] = "32-true"  # the maps are compared exactly below
    assert run_train(small, tmp_path) == 0
    predictions = tmp_path / "runs" / "exp" / "v1" / "predictions"
    rasters = sorted(predictions.glob("*.tif"))
    # the maps are the flips TTA of the best checkpoint (computed here without landseg's TTA),
    # which differ from the same model's plain maps
    flipped, plain = _best_checkpoint_test_maps(tmp_path / "runs" / "exp" / "v1", tmp_path)
    written = {raster.name: _read_classes(raster) for raster in rasters}
    assert written.keys() == flipped.keys() == plain.keys()
    for name, classes in written.items():
        assert np.array_equal(classes, flipped[name]), name
    assert any(not np.array_equal(plain[name], flipped[name]) for name in plain)
    assert rasters and len(rasters) == len(list(predictions.glob("*.gpkg")))
    assert len(rasters) == len(list(predictions.glob("*.qml")))
    with rasterio.open(rasters[0]) as src:
        assert src.count == 1 and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        classes = src.read(1)
    _, _, _, (ids, names) = pyogrio.raw.read(rasters[0].with_suffix(".gpkg"))
    labels = small["data_source"]["class_labels"]
    assert all(name == labels[int(i)] for i, name in zip(ids, names, strict=True))
    assert set(ids.tolist()) == set(np.unique(classes[classes != 255]).tolist())

    small["output_setup"].update(prediction_output_type="uint8", version_name="v2")
    assert run_train(small, tmp_path) == 2  # polygons need class maps: refused before training


class _FlipsByHand:
    """The mean of the probabilities of a tile, flipped left-right, up-down, both and not: what
    ``prediction_tta: flips`` is documented to compute, written without landseg's TTA code."""

    def __init__(self, model: object) -> None:
        self.model = model

    def __getattr__(self, name: str) -> object:
        return getattr(self.__dict__["model"], name)

    def tile_probabilities(self, tiles: np.ndarray, batch_size: int) -> np.ndarray:
        total = np.zeros((0,), np.float32)
        for axes in [(), (-1,), (-2,), (-2, -1)]:
            moved = np.ascontiguousarray(np.flip(tiles, axes)) if axes else tiles
            probs = self.model.tile_probabilities(moved, batch_size)  # type: ignore[attr-defined]
            probs = np.flip(probs, axes) if axes else probs
            total = total + probs if total.size else np.array(probs, np.float32)
        return total / np.float32(4)


def _read_classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _best_checkpoint_test_maps(
    run: Path, tmp_path: Path
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The class maps of the run's test split by its best val_loss checkpoint: with the
    flips by hand, and plain."""
    from landseg.config.load import load_config
    from landseg.data.checks import check_data
    from landseg.data.datamodule import DATAMODULES
    from landseg.inference import split
    from landseg.tasks.segmentation import SegmentationTask

    (best,) = (run / "checkpoints").glob("*-loss-*.ckpt")
    task = SegmentationTask.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    config = load_config(run / "config.json")
    datamodule = DATAMODULES.get("csv")(config, check_data(config))
    datamodule.setup("test")
    plain = split.predict_split(task, datamodule, "test", tmp_path / "plain", "classes")
    original = split.with_tta
    split.with_tta = lambda model, mode: _FlipsByHand(model)  # type: ignore[assignment]
    try:
        flipped = split.predict_split(task, datamodule, "test", tmp_path / "flips", "classes")
    finally:
        split.with_tta = original
    return (
        {path.name: _read_classes(path) for path in flipped},
        {path.name: _read_classes(path) for path in plain},
    )
