"""Whole-scene prediction: tiling, blending without seams, grid/nodata/dtype of the outputs.

The model is an untrained lightunet (no batch norm) with fixed random weights: what is tested
is the machinery, which does not depend on the weights being good.
"""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import Affine
from rasterio.windows import Window

from landseg.cli.main import main
from landseg.core.errors import LandsegError
from landseg.inference.scene import (
    LoadedModel,
    PredictOptions,
    Tiling,
    blend_weights,
    blended_strips,
    grid_anchor,
    predict_array,
    predict_scene,
)
from tests.helpers import (
    LABELS,
    TRANSFORM,
    demo_task,
    read,
    save_checkpoint,
    scene_pixels,
    write_scene,
)


@pytest.fixture(scope="module")
def task(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return demo_task(demo_dir, tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def model(task) -> LoadedModel:
    return LoadedModel.from_task(task)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 x 90 (not a multiple of 16), with a nodata corner (every band 255)."""
    pixels = scene_pixels(90, 100)
    pixels[:, :5, :7] = 255
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", pixels)


# ---------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("anchor", [0, 8, 13, -5, 1_280_006])
def test_tiles_inside_lie_on_the_global_grid_and_edge_tiles_are_flush(anchor: int) -> None:
    tiling = Tiling(32, 16)
    starts = tiling.starts(100, anchor)
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] == 100 - 32
    inner = [s for s in starts if (s + anchor) % 16 == 0]
    # every grid tile that fits is there; at most the two edge tiles are off the grid
    assert inner == [s for s in range(-(anchor % 16), 69) if s >= 0 and (s + anchor) % 16 == 0]
    assert len(starts) - len(inner) <= 2
    assert all(b - a <= 16 for a, b in itertools.pairwise(starts))


def test_tile_count_matches_a_hand_written_sliding_window_on_the_scene_grid() -> None:
    """Anchored at 0, the tiles are exactly a hand loop's: 0, stride, ..., last flush."""
    tiling = Tiling(256, 64)
    assert tiling.starts(1182) == [0, 192, 384, 576, 768, 926]
    assert tiling.starts(901, 0) == [0, 192, 384, 576, 645]
    assert tiling.starts(200, 77) == [0]  # shorter than a tile: one tile, padded


def test_blend_weights_fall_to_the_floor_at_borders() -> None:
    weights = blend_weights(32)
    assert weights.shape == (32, 32) and np.allclose(weights, weights.T)
    assert weights.min() >= 1e-3 and weights[0, 0] < 0.01 and weights[16, 16] > 0.99


def test_grid_anchor_follows_the_transform() -> None:
    assert grid_anchor(Affine.identity()) == (0, 0)
    assert grid_anchor(TRANSFORM) == (-13_720_002, 1_280_006)
    shifted = TRANSFORM @ Affine.translation(8, 3)
    assert grid_anchor(shifted) == (-13_720_002 + 3, 1_280_006 + 8)


def test_bad_tiling_is_a_user_error(model: LoadedModel) -> None:
    with pytest.raises(LandsegError, match="--overlap"):
        Tiling(32, 32)
    with pytest.raises(LandsegError, match="16 px multiple"):
        Tiling(8, 0).check_model(model)


def test_rows_are_read_a_strip_at_a_time(model: LoadedModel) -> None:
    image = np.random.default_rng(1).normal(size=(4, 150, 70)).astype(np.float32)
    asked: list[tuple[int, int]] = []

    def read_rows(first: int, stop: int):
        asked.append((first, stop))
        return image[:, first:stop], None

    strips = list(blended_strips(model, read_rows, 150, 70, Tiling(32, 16)))
    assert max(stop - first for first, stop in asked) <= 32
    rows = [first for first, _, _ in strips]
    assert rows == sorted(rows) and sum(p.shape[1] for _, p, _ in strips) == 150
    assert np.allclose(np.concatenate([p for _, p, _ in strips], axis=1).sum(axis=0), 1, atol=1e-5)


def test_small_image_is_one_forward_pass(model: LoadedModel) -> None:
    image = np.random.default_rng(2).normal(size=(4, 32, 32)).astype(np.float32)
    direct = torch.softmax(model.model(torch.from_numpy(image)[None]), dim=1)[0]
    assert np.allclose(predict_array(model, image, Tiling(64, 16)), direct.detach().numpy())


# ---------------------------------------------------------------------------- seams


def test_no_seams_scene_equals_shifted_crop(model: LoadedModel, tmp_path: Path) -> None:
    """A crop shifted by 8 px (half a stride) gets the same tiles, so the same probabilities.

    Equal where every tile covering a pixel lies inside both rasters: at least one tile size
    (32 px) from the crop's edges. Without the grid anchored to the CRS the tiles would be
    shifted by 8 px against the scene's and the values would differ.
    """
    pixels = scene_pixels(128, 144, seed=3)
    big = write_scene(tmp_path / "big.tif", pixels)
    dy, dx, h, w = 8, 8, 96, 120
    crop = write_scene(
        tmp_path / "crop.tif",
        pixels[:, dy : dy + h, dx : dx + w],
        transform=rasterio.windows.transform(Window(dx, dy, w, h), TRANSFORM),
    )
    options = PredictOptions(Tiling(32, 16, batch_size=5), "float32")
    a = read(predict_scene(model, big, tmp_path / "out" / "big.tif", options))
    b = read(predict_scene(model, crop, tmp_path / "out" / "crop.tif", options))
    margin = 32
    inner_a = a[:, dy + margin : dy + h - margin, dx + margin : dx + w - margin]
    inner_b = b[:, margin : h - margin, margin : w - margin]
    assert inner_a.size > 0
    assert np.abs(inner_a - inner_b).max() < 1e-4

    # the same crop read as a raster without georeferencing: tiles no longer aligned
    unaligned = predict_array(
        model, pixels[:, dy : dy + h, dx : dx + w].astype(np.float32) / 255, Tiling(32, 16)
    )
    assert np.abs(unaligned[:, margin : h - margin, margin : w - margin] - inner_b).max() > 1e-4


# ---------------------------------------------------------------------------- outputs


def test_outputs_keep_grid_and_nodata(model: LoadedModel, scene: Path, tmp_path: Path) -> None:
    tiling = Tiling(32, 8, batch_size=3)
    paths = {
        kind: predict_scene(model, scene, tmp_path / kind / "p.tif", PredictOptions(tiling, kind))
        for kind in ("classes", "uint8", "float32")
    }
    with rasterio.open(scene) as src:
        grid = (src.crs, src.transform, src.width, src.height)
    for kind, path in paths.items():
        with rasterio.open(path) as out:
            assert (out.crs, out.transform, out.width, out.height) == grid, kind
            assert out.count == (1 if kind == "classes" else 4)
            assert json.loads(out.tags()["landseg_class_labels"]) == LABELS
    with rasterio.open(paths["classes"]) as out:
        classes = out.read(1)
        assert out.nodata == 255 and out.dtypes[0] == "uint8"
        assert out.colormap(1)[255] == (0, 0, 0, 0) and out.colormap(1)[0][3] == 255
    probs = read(paths["float32"])
    scaled = read(paths["uint8"])
    nodata = np.zeros(classes.shape, bool)
    nodata[:5, :7] = True
    assert (classes[nodata] == 255).all() and (classes[~nodata] < 4).all()
    assert np.isnan(probs[:, nodata]).all() and np.allclose(probs[:, ~nodata].sum(0), 1, atol=1e-5)
    assert (scaled[:, nodata] == 255).all() and scaled[:, ~nodata].max() <= 254
    assert (probs[:, ~nodata].argmax(0) == classes[~nodata]).all()
    assert (np.abs(scaled[:, ~nodata] - probs[:, ~nodata] * 255) <= 1).all()


def test_uint16_scene_needs_a_pixel_range(model: LoadedModel, scene: Path, tmp_path: Path) -> None:
    wide = write_scene(tmp_path / "wide.tif", read(scene), dtype="uint16")
    options = PredictOptions(Tiling(32, 16), "float32")
    with pytest.raises(LandsegError, match="--pixel-range"):
        predict_scene(model, wide, tmp_path / "a.tif", options)
    ranged = PredictOptions(Tiling(32, 16), "float32", pixel_range=255)
    a = read(predict_scene(model, wide, tmp_path / "a.tif", ranged))
    b = read(predict_scene(model, scene, tmp_path / "b.tif", options))
    assert np.array_equal(a, b, equal_nan=True)


def test_tile_not_a_multiple_of_the_model(model: LoadedModel, scene: Path, tmp_path: Path) -> None:
    out = predict_scene(model, scene, tmp_path / "p.tif", PredictOptions(Tiling(40, 12)))
    assert read(out).shape == (1, 90, 100)


def test_predict_split_of_whole_scenes(task, scene: Path, tmp_path: Path) -> None:
    """The test split may hold whole scenes of any size (here 100 x 90)."""
    from landseg.data.csvfiles import SamplePair
    from landseg.data.dataset import SegmentationDataset
    from landseg.inference.split import predict_split

    pixels = read(scene)
    pixels[:, :5, :7] = 0
    image = write_scene(tmp_path / "img" / "s.tif", pixels)
    mask = write_scene(tmp_path / "msk" / "s.tif", np.zeros((1, 90, 100), np.uint8))
    dataset = SegmentationDataset(
        [SamplePair(image, mask, 1)],
        image_bands=None,
        mask_bands=None,
        n_classes=4,
        pixel_range=255,
    )
    written = predict_split(
        task, SimpleNamespace(test_dataset=dataset), "test", tmp_path / "p", "bit"
    )
    with rasterio.open(written[0]) as out:
        assert (out.count, out.height, out.width, out.transform) == (4, 90, 100, TRANSFORM)
        assert (out.read().sum(axis=0) == 1).all()


# ---------------------------------------------------------------------------- CLI


def test_predict_command(task, scene: Path, tmp_path: Path, capsys) -> None:
    checkpoint = save_checkpoint(task, tmp_path / "run" / "checkpoints" / "m-last.ckpt")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"status": "finished"}))
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        (folder / name).write_bytes(scene.read_bytes())
    common = ["--tile", "32", "--overlap", "8", "--no-progress", "--device", "cpu"]
    args = ["predict", "--run", str(tmp_path / "run"), "--input", str(folder)]
    assert main([*args, "--output", str(tmp_path / "out"), *common]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    # class rasters and their styles, and the job's state (landseg.inference.job)
    assert written == [
        ".predict",
        "a.qml",
        "a.tif",
        "areas.csv",
        "b.qml",
        "b.tif",
        "mosaic.vrt",
        "predict.json",
    ]
    assert np.array_equal(read(tmp_path / "out" / "a.tif"), read(tmp_path / "out" / "b.tif"))

    csv = folder / "list.csv"
    csv.write_text("image,mask\na.tif,a.tif\n")
    args = ["predict", "--run", str(checkpoint), "--input", str(csv), "--type", "uint8"]
    assert main([*args, "--output", str(tmp_path / "csv_out"), *common]) == 0
    assert read(tmp_path / "csv_out" / "a.tif").shape == (4, 90, 100)

    capsys.readouterr()
    bad = ["predict", "--run", str(checkpoint), "--input", str(tmp_path / "none.tif")]
    assert main([*bad, "--output", str(tmp_path / "x"), *common]) == 2
    assert "none.tif: input not found" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "x"), "--tile", "8", "--overlap", "0"]) == 2
    assert "--tile 8" in capsys.readouterr().err
    # numbers refused by the parser, before anything is loaded or written
    for option, value in (
        ("--pixel-range", "nan"),
        ("--pixel-range", "inf"),
        ("--min-area", "-5"),
        ("--simplify", "-1"),
    ):
        extra = ["--vectorize"] if option != "--pixel-range" else []
        with pytest.raises(SystemExit) as refused:
            main([*args, "--output", str(tmp_path / "y"), *extra, option, value, *common])
        assert refused.value.code == 2
        assert f"{option}: must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    # an output that is a file: said before the first prediction, naming --output
    (tmp_path / "taken.tif").write_bytes(b"x")
    assert main([*args, "--output", str(tmp_path / "taken.tif"), *common]) == 2
    err = capsys.readouterr().err
    assert f"--output {tmp_path / 'taken.tif'}: cannot write the predictions: " in err
    assert "is a file, not a folder" in err
    # the output folder is the input folder: the scenes would be replaced by their maps
    before = (folder / "a.tif").read_bytes()
    same = ["predict", "--run", str(tmp_path / "run"), "--input", str(folder), "--glob", "*.tif"]
    assert main([*same, "--output", str(folder), *common]) == 2
    assert "the prediction of " in capsys.readouterr().err
    assert (folder / "a.tif").read_bytes() == before


# ---------------------------------------------------------------------------- issue 11


COMMON = ["--tile", "32", "--overlap", "8", "--no-progress", "--device", "cpu"]


def test_predictions_record_every_setting_that_changes_their_pixels(
    task, scene: Path, tmp_path: Path
) -> None:
    """The tags say the checkpoint, --tta, the pixel range, the tile and overlap: predicting
    again with them gives the same pixels."""
    checkpoint = save_checkpoint(task, tmp_path / "run" / "checkpoints" / "m-last.ckpt")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"status": "finished"}))
    args = ["predict", "--run", str(checkpoint), "--input", str(scene), "--no-progress"]
    args += ["--device", "cpu", "--type", "float32"]
    settings = ["--tta", "flips", "--pixel-range", "300", "--tile", "32", "--overlap", "8"]
    assert main([*args, *settings, "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--output", str(tmp_path / "b")]) == 0
    with (
        rasterio.open(tmp_path / "a" / "scene.tif") as a,
        rasterio.open(tmp_path / "b" / "scene.tif") as b,
    ):
        tags, plain = a.tags(), b.tags()
    assert tags["landseg_checkpoint"] == str(checkpoint.absolute())
    assert {key: tags[key] for key in tags if key.startswith("landseg_")} == {
        "landseg_class_labels": json.dumps(LABELS),
        "landseg_type": "float32",
        "landseg_checkpoint": str(checkpoint.absolute()),
        "landseg_tta": "flips",
        "landseg_pixel_range": "300",
        "landseg_tile": "32",
        "landseg_overlap": "8",
    }
    assert (plain["landseg_tta"], plain["landseg_pixel_range"]) == ("none", "255")
    assert (plain["landseg_tile"], plain["landseg_overlap"]) == ("256", "64")


def make_run_folder(task, run: Path) -> Path:
    """A run folder holding run.json and one checkpoint of ``task``."""
    save_checkpoint(task, run / "checkpoints" / "m-last.ckpt")
    (run / "run.json").write_text(json.dumps({"status": "finished"}))
    return run


def test_every_input_is_checked_before_the_first_is_predicted(
    task, scene: Path, tmp_path: Path, capsys
) -> None:
    """Masks next to the scenes and a uint16 scene: every problem at once, nothing written."""
    run = make_run_folder(task, tmp_path / "run")
    folder = tmp_path / "scenes"
    folder.mkdir()
    (folder / "a.tif").write_bytes(scene.read_bytes())
    write_scene(folder / "a_mask.tif", np.zeros((1, 90, 100), np.uint8))
    write_scene(folder / "b_wide.tif", read(scene), dtype="uint16")
    (folder / "c_broken.tif").write_bytes(b"not a raster")
    out = tmp_path / "out"
    args = ["predict", "--run", str(run), "--input", str(folder), "--output", str(out)]
    capsys.readouterr()
    assert main([*args, *COMMON]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert not out.exists()  # nothing written, not even the folder
    assert len(lines) == 4, lines
    assert "a_mask.tif: the model takes 4 bands" in lines[0] and "raster has 1" in lines[0]
    assert "b_wide.tif: uint16 image" in lines[1] and "--pixel-range" in lines[1]
    assert "c_broken.tif: cannot read raster" in lines[2]
    assert lines[3] == (
        "error: nothing predicted: 3 of 4 input(s) cannot be predicted (choose the folder's "
        "files with --glob PATTERN)"
    )
    assert main([*args, *COMMON, "--glob", "*.tif"]) == 2  # chosen already: no such hint
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: nothing predicted: 3 of 4 input(s) cannot be predicted"
    )


def test_glob_selects_the_files_of_a_folder(task, scene: Path, tmp_path: Path, capsys) -> None:
    run = make_run_folder(task, tmp_path / "run")
    folder = tmp_path / "scenes"
    (folder / "sub").mkdir(parents=True)
    for name in ("scene_a.tif", "scene_b.TIFF", "sub/scene_c.tif"):
        (folder / name).write_bytes(scene.read_bytes())
    write_scene(folder / "mask_a.tif", np.zeros((1, 90, 100), np.uint8))
    args = ["predict", "--run", str(run), "--input", str(folder), *COMMON]

    assert main([*args, "--output", str(tmp_path / "o1"), "--glob", "scene_*"]) == 0
    assert sorted(p.name for p in (tmp_path / "o1").glob("*.tif")) == ["scene_a.tif", "scene_b.tif"]
    assert main([*args, "--output", str(tmp_path / "o2"), "--glob", "**/scene_*.tif"]) == 0
    assert sorted(p.name for p in (tmp_path / "o2").glob("*.tif")) == ["scene_a.tif", "scene_c.tif"]

    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "o3"), "--glob", "*.jp2"]) == 2
    assert "no file matches --glob *.jp2" in capsys.readouterr().err
    one = ["predict", "--run", str(run), "--input", str(folder / "scene_a.tif"), *COMMON]
    assert main([*one, "--output", str(tmp_path / "o4"), "--glob", "*.tif"]) == 2
    assert "--glob *.tif: selects files of a folder --input" in capsys.readouterr().err


def test_run_may_be_a_pth_inside_its_run_folder(task, scene: Path, tmp_path: Path, capsys) -> None:
    """The .pth's weights (not the checkpoint's) on the model its run's checkpoint describes."""
    run = make_run_folder(task, tmp_path / "run")
    other = demo_task(Path(task.config.data_source.train_file).parent, tmp_path)
    with torch.no_grad():
        for parameter in other.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.save(other.model.state_dict(), run / "m.pth")  # model_out_ext: .pth
    torch.save(other.model.state_dict(), run / "checkpoints" / "m-best.pth")  # export
    expected = read(
        predict_scene(
            LoadedModel.from_task(other),
            scene,
            tmp_path / "expected.tif",
            PredictOptions(Tiling(32, 8), "float32"),
        )
    )
    from_ckpt = read(
        predict_scene(
            LoadedModel.from_task(task),
            scene,
            tmp_path / "ckpt.tif",
            PredictOptions(Tiling(32, 8), "float32"),
        )
    )
    assert not np.allclose(expected, from_ckpt, equal_nan=True)  # the test can tell them apart
    for weights in (run / "m.pth", run / "checkpoints" / "m-best.pth"):
        out = tmp_path / weights.stem
        args = ["predict", "--run", str(weights), "--input", str(scene), "--output", str(out)]
        assert main([*args, "--type", "float32", *COMMON]) == 0
        assert np.allclose(read(out / "scene.tif"), expected, atol=1e-5, equal_nan=True)
        with rasterio.open(out / "scene.tif") as written:
            assert written.tags()["landseg_checkpoint"] == str(weights.absolute())

    capsys.readouterr()
    loose = tmp_path / "loose" / "m.pth"
    loose.parent.mkdir()
    loose.write_bytes((run / "m.pth").read_bytes())
    args = ["predict", "--run", str(loose), "--input", str(scene), "--output", str(tmp_path / "x")]
    assert main([*args, *COMMON]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.pth: a .pth holds the network's weights but no config" in err[0]
    assert "not inside a run folder" in err[0]

    torch.save({"epoch": 3, "val_loss": 0.5}, run / "train_m.pth")  # the training state
    torch.save({"head.weight": torch.zeros(3)}, run / "foreign.pth")  # another network's
    for name, reason in (
        ("train_m.pth", "not a network's weights"),
        ("foreign.pth", "its weights do not fit the run's model lightunet"),
    ):
        args[2] = str(run / name)
        assert main([*args, *COMMON]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{name}: {reason}" in err[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("output_type", ["uint8", "float32", "bit"])
def test_training_predictions_are_written_like_predict(
    model: LoadedModel, task, scene: Path, tmp_path: Path, output_type: str
) -> None:
    """get_prediction's files carry predict's nodata, band names and tags."""
    from landseg.data.csvfiles import SamplePair
    from landseg.data.dataset import SegmentationDataset
    from landseg.inference.split import predict_split

    mask = write_scene(tmp_path / "msk" / "scene.tif", np.zeros((1, 90, 100), np.uint8))
    dataset = SegmentationDataset(
        [SamplePair(scene, mask, 1)],
        image_bands=[1, 2, 3, 4],
        mask_bands=None,
        n_classes=4,
        pixel_range=255,
    )
    datamodule = SimpleNamespace(test_dataset=dataset)
    (split_file,) = predict_split(task, datamodule, "test", tmp_path / "split", output_type)
    scene_file = predict_scene(
        model, scene, tmp_path / "scene" / "scene.tif", PredictOptions(output_type=output_type)
    )
    with rasterio.open(split_file) as a, rasterio.open(scene_file) as b:
        assert a.tags() == b.tags() and a.tags()["landseg_type"] == output_type
        assert a.descriptions == b.descriptions == tuple(LABELS)
        assert (a.count, a.dtypes, a.crs, a.transform) == (b.count, b.dtypes, b.crs, b.transform)
        assert a.nodata == b.nodata or (np.isnan(a.nodata) and np.isnan(b.nodata))
        a_nodata, b_nodata = a.read_masks(1) == 0, b.read_masks(1) == 0
        assert ColorInterp.alpha not in a.colorinterp  # 4 uint8 classes are not RGBA
        assert a_nodata[:5, :7].all() and np.array_equal(a_nodata, b_nodata)


# ---------------------------------------------------------------------------- stop signals


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _workers(pid: int) -> list[int]:
    """The children of ``pid`` that are spawned multiprocessing workers (not the resource
    tracker, which is a child too)."""
    found = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"spawn_main" in part for part in command):
            found.append(child)
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_predict_leaves_no_temporary_file_and_no_worker(
    workers: int, task, tmp_path: Path
) -> None:
    """SIGTERM (kill, a scheduler) stops the job: exit 143 with one line saying to run the
    same command again, no temporary file left, the workers ended with the command (what the
    unfinished maps have on disk is kept by the job: tests/inference/test_predict_job.py)."""
    import subprocess
    import sys
    import time

    run = make_run_folder(task, tmp_path / "run")
    scenes = tmp_path / "scenes"
    for name in ("a", "b"):
        write_scene(scenes / f"{name}.tif", scene_pixels(640, 640, seed=ord(name)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "landseg.cli.main", "predict", "--run", str(run)]
    command += ["--input", str(scenes), "--output", str(out), "--workers", str(workers), *COMMON]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob(".predict/partial/*.tif")) and process.poll() is None:
        assert time.monotonic() < deadline, "no map was started"
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read() if process.stderr else ""
    workers_seen: list[int] = []
    if workers > 1:  # the check below means nothing unless it sees every worker
        while len(_workers(process.pid)) < workers:
            assert time.monotonic() < deadline and process.poll() is None, "no workers"
            time.sleep(0.05)
        workers_seen = _children(process.pid)  # and multiprocessing's resource tracker
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped by SIGTERM after ")
    assert last.endswith("; run the same command again to continue")
    assert "Traceback" not in err
    assert list(out.rglob(".*.tmp")) == []
    deadline = time.monotonic() + 15  # the workers, and multiprocessing's resource tracker
    while not all(_gone(pid) for pid in workers_seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in workers_seen if not _gone(pid)] == []


@pytest.mark.parametrize(("tile", "overlap", "expected"), [(None, None, (256, 64)),
                         (64, None, (64, 16)), (64, 8, (64, 8))])  # fmt: skip
def test_the_default_overlap_is_a_quarter_of_the_tile(
    tile: int | None, overlap: int | None, expected: tuple[int, int]
) -> None:
    """--tile 64 alone was refused for the default overlap 64 the user had never set."""
    import argparse

    from landseg.cli.predict import _options

    args = argparse.Namespace(tile=tile, overlap=overlap, batch_size=8, pixel_range=None)
    tiling = _options(args, "classes").tiling
    assert (tiling.tile, tiling.overlap) == expected
