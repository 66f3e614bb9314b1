"""A model that leaves landseg: ``landseg export`` (ONNX, TorchScript) and ``predict --model``.

Train-free: an untrained lightunet with the demo's config (4 bands, 4 classes) and set
normalisation weights, saved as a checkpoint. What is tested is that the exports compute what
the checkpoint computes and describe how to feed them, not that the weights are good.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from landseg.cli.main import main
from landseg.inference.portable import PortableModel, deepness_metadata
from landseg.inference.scene import Tiling, predict_array
from landseg.loggers.figures import class_palette
from tests.helpers import read, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")

LABELS = ["water", "vegetation", "bare soil", "building"]
MEAN = [0.31, 0.42, 0.37, 0.5]
STD = [0.12, 0.15, 0.11, 0.2]
TILE, OVERLAP = 64, 16
CRS = "EPSG:32631"
TRANSFORM = Affine(0.5, 0.0, 640_003.0, 0.0, -0.5, 6_860_001.0)


def demo_task(demo_dir: Path, tmp: Path):
    """An untrained SegmentationTask of the demo's config with mean/std, seeded."""
    from landseg.config.load import validate_config
    from landseg.tasks.segmentation import SegmentationTask

    raw = json.loads((demo_dir / "demo.json").read_text())
    raw["output_setup"]["output_folder"] = str(tmp / "runs")
    raw["data_source"]["normalization_weights"] = {"train": {"mean": MEAN, "std": STD}}
    config = validate_config(raw, demo_dir / "demo.json").model_dump(mode="json")
    torch.manual_seed(0)
    return SegmentationTask(config, 4, LABELS).eval()


def write_scene(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A (4, H, W) uint8 landscape with structure at several scales and a nodata corner."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 110 + 60 * np.sin(x / 7.0)[None] * np.cos(y / 11.0)[None]
    bands = base + rng.normal(0, 20, (4, height, width)) + np.arange(4)[:, None, None] * 10
    pixels = np.clip(bands, 0, 250).astype(np.uint8)
    pixels[:, :5, :7] = 255
    profile = {
        "driver": "GTiff",
        "count": 4,
        "height": height,
        "width": width,
        "dtype": "uint8",
        "crs": CRS,
        "transform": TRANSFORM,
        "nodata": 255,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


#: run.json's record of the encoder weights the run started from (as training writes it).
PRETRAINED = {
    "file": "rgb.safetensors",
    "path": "/weights/rgb.safetensors",
    "size": 46_000_000,
    "sha256": "ab" * 32,
    "source": "file",
    "loaded": 100,
    "total": 100,
    "missing": [],
}


@pytest.fixture(scope="module")
def task(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return demo_task(demo_dir, tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def run(task, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with run.json and one checkpoint, exported in both formats."""
    folder = tmp_path_factory.mktemp("runs") / "exp" / "v1"
    save_checkpoint(task, folder / "checkpoints" / "m-loss-epoch=003-val_loss=0.5000.ckpt")
    state = {"status": "finished", "best": {"val_loss": 0.5}, "encoder_weights": PRETRAINED}
    (folder / "run.json").write_text(json.dumps(state))
    args = ["export", str(folder), "--format", "onnx", "--format", "torchscript"]
    assert main([*args, "--tile", str(TILE), "--overlap", str(OVERLAP)]) == 0
    return folder


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 x 130: larger than the 64 px tile in both directions, not a multiple of it."""
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 130, 150)


def onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def reference(task, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(task.model(torch.from_numpy(batch)), dim=1).numpy()


# ---------------------------------------------------------------------------- the files


def test_export_writes_the_model_files_and_the_stac_item(run: Path) -> None:
    exports = run / "exports"
    assert sorted(p.name for p in exports.iterdir()) == ["m.onnx", "m.pt", "m.stac.json"]
    assert not list(exports.glob(".*.tmp"))  # written atomically, no temporary left


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_gives_the_checkpoints_probabilities_with_any_batch(task, run, batch) -> None:
    session = onnx_session(run / "exports" / "m.onnx")
    (model_input,) = session.get_inputs()
    assert model_input.name == "image" and model_input.shape[1:] == [4, TILE, TILE]
    assert isinstance(model_input.shape[0], str)  # a dynamic batch axis
    tiles = np.random.default_rng(batch).normal(size=(batch, 4, TILE, TILE)).astype(np.float32)
    (probs,) = session.run(None, {"image": tiles})
    assert probs.shape == (batch, 4, TILE, TILE)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.abs(probs - reference(task, tiles)).max() < 1e-4


@pytest.mark.parametrize("batch", [1, 3])
def test_torchscript_gives_the_checkpoints_probabilities(task, run, batch) -> None:
    extra = {"landseg.json": ""}
    module = torch.jit.load(str(run / "exports" / "m.pt"), _extra_files=extra)
    assert json.loads(extra["landseg.json"])["format"] == "torchscript"
    tiles = np.random.default_rng(batch).normal(size=(batch, 4, TILE, TILE)).astype(np.float32)
    with torch.no_grad():
        probs = module(torch.from_numpy(tiles)).numpy()
    assert probs.shape == (batch, 4, TILE, TILE)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.abs(probs - reference(task, tiles)).max() < 1e-5


# ---------------------------------------------------------------------------- the metadata


def onnx_metadata(path: Path) -> dict[str, str]:
    return dict(onnx_session(path).get_modelmeta().custom_metadata_map)


def test_onnx_metadata_describes_the_run(task, run: Path) -> None:
    props = onnx_metadata(run / "exports" / "m.onnx")
    meta = json.loads(props["landseg"])
    colours = ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in class_palette(4)]
    assert meta["classes"] == [
        {"value": i, "name": name, "color": colours[i]} for i, name in enumerate(LABELS)
    ]
    assert meta["format"] == "onnx" and meta["landseg_export"] == 1
    assert meta["input"]["shape"] == [-1, 4, TILE, TILE]
    assert meta["input"]["bands"] == [1, 2, 3, 4]
    assert meta["output"]["shape"] == [-1, 4, TILE, TILE]
    assert meta["output"]["activation"] == "softmax"
    norm = meta["normalization"]
    assert (norm["mean"], norm["std"]) == (MEAN, STD)
    assert norm["pixel_range"] is None  # as the run: by the raster's dtype
    assert (norm["training_dtype"], norm["training_pixel_range"]) == ("uint8", 255.0)
    tiling = meta["tiling"]
    assert (tiling["tile"], tiling["overlap"], tiling["overlap_percent"]) == (64, 16, 25)
    assert tiling["training_tile"] == [32, 32]  # the demo's tiles
    assert meta["resolution"] == 0.5 and meta["resolution_unit"] == "m"
    assert meta["model"]["name"] == "lightunet" and meta["model"]["size_multiple"] == 16
    assert meta["model"]["parameters"] == sum(p.numel() for p in task.model.parameters())
    keys = ("file", "size", "sha256", "source", "loaded", "total")
    assert meta["model"]["encoder_weights"] == {key: PRETRAINED[key] for key in keys}
    source = meta["source"]
    assert source["run"] == str(run) and source["run_name"] == "v1"
    assert source["checkpoint"] == "m-loss-epoch=003-val_loss=0.5000.ckpt"
    assert source["epoch"] == 3 and source["best"] == {"val_loss": 0.5}
    from landseg import __version__

    assert meta["landseg_version"] == __version__


def test_onnx_metadata_for_qgis_deepness(run: Path) -> None:
    """The keys and JSON-encoded values the Deepness plugin reads (it divides by 255 itself;
    the training pixel range is 255 here, so mean/std stay as they are)."""
    props = onnx_metadata(run / "exports" / "m.onnx")
    assert json.loads(props["model_type"]) == "Segmentor"
    assert json.loads(props["class_names"]) == {str(i): name for i, name in enumerate(LABELS)}
    assert json.loads(props["resolution"]) == 50.0  # cm per pixel
    assert json.loads(props["tile_size"]) == json.loads(props["tiles_size"]) == TILE
    assert json.loads(props["tiles_overlap"]) == 25  # percent
    assert json.loads(props["standardization_mean"]) == MEAN
    assert json.loads(props["standardization_std"]) == STD


def test_deepness_standardisation_folds_another_pixel_range() -> None:
    """(p / 255 - m') / s' == (p / 4095 - m) / s for 12-bit data."""
    meta = {
        "normalization": {"training_pixel_range": 4095.0, "mean": [0.2], "std": [0.1]},
        "input": {"shape": [-1, 1, 32, 32]},
        "tiling": {"tile": 32, "overlap_percent": 25},
        "classes": [{"value": 0, "name": "a"}],
        "resolution": None,
    }
    props = deepness_metadata(meta)
    mean, std = json.loads(props["standardization_mean"]), json.loads(props["standardization_std"])
    pixels = np.array([0.0, 1000.0, 4095.0])
    assert np.allclose((pixels / 255 - mean[0]) / std[0], (pixels / 4095 - 0.2) / 0.1)
    assert "resolution" not in props


def test_stac_item_with_the_mlm_extension(run: Path) -> None:
    item = json.loads((run / "exports" / "m.stac.json").read_text())
    assert item["type"] == "Feature" and item["stac_version"] == "1.1.0"
    assert item["stac_extensions"] == ["https://stac-extensions.github.io/mlm/v1.4.0/schema.json"]
    props = item["properties"]
    assert props["mlm:name"] == item["id"] == "v1-m"
    assert props["mlm:architecture"] == "U-Net"
    assert props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:framework"] == "PyTorch"
    (model_input,) = props["mlm:input"]
    assert model_input["bands"] == ["band 1", "band 2", "band 3", "band 4"]
    assert model_input["input"] == {
        "shape": [-1, 4, TILE, TILE],
        "dim_order": ["batch", "channel", "height", "width"],
        "data_type": "float32",
    }
    assert model_input["value_scaling"] == [
        {"type": "z-score", "mean": m * 255.0, "stddev": s * 255.0}
        for m, s in zip(MEAN, STD, strict=True)
    ]
    assert [band["name"] for band in props["bands"]] == model_input["bands"]
    (output,) = props["mlm:output"]
    assert output["result"]["shape"] == [-1, 4, TILE, TILE]
    colours = ["{:02X}{:02X}{:02X}".format(*rgb) for rgb in class_palette(4)]
    assert output["classification:classes"] == [
        {"value": i, "name": name, "color_hint": colours[i]} for i, name in enumerate(LABELS)
    ]
    assert props["gsd"] == 0.5
    assert props["mlm:pretrained"] is True
    assert props["mlm:pretrained_source"] == "rgb.safetensors"
    assets = item["assets"]
    assert assets["onnx"]["href"] == "./m.onnx" and assets["torchscript"]["href"] == "./m.pt"
    assert assets["onnx"]["mlm:artifact_type"] == "onnx"
    assert assets["torchscript"]["mlm:artifact_type"] == "torch.jit.save"
    assert all("mlm:model" in asset["roles"] for asset in assets.values())


# ---------------------------------------------------------------------------- predict --model


@pytest.mark.parametrize("name", ["m.onnx", "m.pt"])
def test_predict_model_agrees_with_predict_run(run: Path, scene: Path, tmp_path, name) -> None:
    """Same classes (>= 99.9 % of pixels) from the export and from the checkpoint."""
    checkpoint = next((run / "checkpoints").glob("*.ckpt"))
    common = ["--input", str(scene), "--no-progress", "--device", "cpu"]
    by_run = tmp_path / "run"
    tiling = ["--tile", str(TILE), "--overlap", str(OVERLAP)]
    assert (
        main(["predict", "--run", str(checkpoint), "--output", str(by_run), *common, *tiling]) == 0
    )
    by_model = tmp_path / "model"
    model = run / "exports" / name
    assert main(["predict", "--model", str(model), "--output", str(by_model), *common]) == 0
    a, b = read(by_run / "scene.tif"), read(by_model / "scene.tif")
    assert a.shape == b.shape == (1, 130, 150)
    assert len(np.unique(a[a != 255])) > 1, "a one-class prediction would prove little"
    assert (a == b).mean() >= 0.999
    assert ((a == 255) == (b == 255)).all() and (a == 255).sum() == 35  # the nodata corner
    with rasterio.open(by_model / "scene.tif") as src:
        assert src.tags()["landseg_checkpoint"] == str(model)
        assert json.loads(src.tags()["landseg_class_labels"]) == LABELS


def test_portable_model_predicts_a_scene_smaller_than_its_tile(run: Path, task) -> None:
    model = PortableModel.load(run / "exports" / "m.onnx", "cpu")
    assert (model.tile, model.overlap, model.n_classes, model.in_channels) == (64, 16, 4, 4)
    assert model.config.data_source.normalization_weights.for_split("test").mean == MEAN
    image = np.random.default_rng(5).normal(size=(4, 40, 50)).astype(np.float32)
    probs = predict_array(model, image, Tiling(TILE, OVERLAP))
    assert probs.shape == (4, 40, 50) and np.allclose(probs.sum(axis=0), 1, atol=1e-5)


def test_predict_model_refuses_another_tile_size(run: Path, scene: Path, tmp_path, capsys):
    args = ["predict", "--model", str(run / "exports" / "m.onnx"), "--input", str(scene)]
    assert main([*args, "--output", str(tmp_path / "o"), "--tile", "32", "--no-progress"]) == 2
    assert "takes 64 px tiles only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_onnxruntime_is_one_line_naming_the_extra(
    run: Path, scene: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    args = ["predict", "--model", str(run / "exports" / "m.onnx"), "--input", str(scene)]
    assert main([*args, "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime" in err[0] and "landseg[onnx]" in err[0]


def test_a_file_that_is_no_export_is_refused(tmp_path: Path, scene: Path, capsys) -> None:
    other = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(other))
    args = ["predict", "--model", str(other), "--input", str(scene), "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "o")]) == 2
    assert "not a landseg export" in capsys.readouterr().err
    args[2] = str(tmp_path / "model.ckpt")
    assert main([*args, "--output", str(tmp_path / "o")]) == 2


def test_class_colours_travel_with_the_export(demo_dir: Path, tmp_path: Path) -> None:
    """A run's ``output_setup.class_colors`` are the export's, and colour its predictions."""
    from landseg.config.schema import OutputSetup

    if "class_colors" not in OutputSetup.model_fields:
        pytest.skip("this landseg has no output_setup.class_colors")
    task = demo_task(demo_dir, tmp_path)
    colours = ["#102030", "#405060", "#708090", "#a0b0c0"]
    hparams = dict(task.hparams)
    hparams["config"]["output_setup"]["class_colors"] = colours
    from landseg.tasks.segmentation import SegmentationTask

    task = SegmentationTask(**hparams).eval()
    save_checkpoint(task, tmp_path / "run" / "checkpoints" / "c-last.ckpt")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"status": "finished"}))
    args = ["export", str(tmp_path / "run"), "--format", "torchscript", "--tile", "32"]
    assert main(args) == 0
    model = PortableModel.load(tmp_path / "run" / "exports" / "c.pt", "cpu")
    assert [c["color"] for c in model.metadata["classes"]] == colours
    assert model.config.output_setup.class_colors == colours


def test_export_refuses_class_colours_that_do_not_fit(
    demo_dir: Path, tmp_path: Path, capsys
) -> None:
    """A checkpoint whose ``class_colors`` count is not its classes' (written before the check
    at validation) is refused, as predict and report refuse it, not exported with the
    default palette instead."""
    from landseg.tasks.segmentation import SegmentationTask

    hparams = dict(demo_task(demo_dir, tmp_path).hparams)
    hparams["config"]["output_setup"]["class_colors"] = ["#102030", "#405060"]
    task = SegmentationTask(**hparams).eval()
    save_checkpoint(task, tmp_path / "run" / "checkpoints" / "c-last.ckpt")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"status": "finished"}))
    args = ["export", str(tmp_path / "run"), "--format", "torchscript", "--tile", "32"]
    assert main(args) == 2
    assert "output_setup.class_colors: 2 colour(s) for 4 classes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "exports" / "c.pt").exists()


def test_export_refuses_a_tile_that_is_not_the_models_multiple(run: Path, capsys) -> None:
    assert main(["export", str(run), "--tile", "40", "--output", str(run / "x")]) == 2
    assert "multiple of the model's 16 px" in capsys.readouterr().err
    assert not (run / "x").exists()
