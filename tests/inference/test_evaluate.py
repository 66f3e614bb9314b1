"""``landseg evaluate``: predictions against masks, in the history format of training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from landseg.cli.main import main
from landseg.core.errors import LandsegError
from landseg.inference.evaluate import evaluate_predictions
from landseg.inference.scene import LoadedModel, PredictOptions, Tiling, predict_scene
from tests.helpers import (
    LABELS,
    demo_task,
    read,
    save_checkpoint,
    scene_pixels,
    write_scene,
)

TILING = ["--tile", "32", "--overlap", "8", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two scenes, their class/probability predictions, and masks that differ a little."""
    tmp = tmp_path_factory.mktemp("evaluate")
    task = demo_task(demo_dir, tmp)
    model = LoadedModel.from_task(task)
    rows, expected = [], np.zeros((4, 4), np.int64)
    for index, name in enumerate(("s1", "s2")):
        pixels = scene_pixels(70, 60, seed=index)
        pixels[:, :4, :4] = 255  # input nodata: no prediction there
        image = write_scene(tmp / "img" / f"{name}.tif", pixels)
        for kind in ("classes", "float32", "uint8"):
            options = PredictOptions(Tiling(32, 8), kind)
            predict_scene(model, image, tmp / kind / f"{name}.tif", options)
        predicted = read(tmp / "classes" / f"{name}.tif")[0]
        truth = predicted.copy()
        truth[10:20, 10:30] = (truth[10:20, 10:30] + 1) % 4  # 200 wrong pixels
        truth[40:45, :] = 255  # unlabelled
        write_scene(tmp / "msk" / f"{name}_mask.tif", truth[None])
        keep = (predicted != 255) & (truth != 255)
        np.add.at(expected, (truth[keep].astype(int), predicted[keep].astype(int)), 1)
        rows.append(f"img/{name}.tif,msk/{name}_mask.tif")
    (tmp / "pairs.csv").write_text("\n".join(rows) + "\n")
    checkpoint = save_checkpoint(task, tmp / "run" / "checkpoints" / "m-last.ckpt")
    return {"tmp": tmp, "expected": expected, "checkpoint": checkpoint}


@pytest.mark.parametrize("kind", ["classes", "float32", "uint8"])
def test_scores_match_the_confusion(setup: dict, kind: str) -> None:
    tmp = setup["tmp"]
    entry = evaluate_predictions(tmp / kind, tmp / "pairs.csv")
    assert entry["cm_macro"] == setup["expected"].tolist()
    assert entry["files"] == 2 and entry["pixels"] == setup["expected"].sum()
    assert [k for k in entry if k.endswith("/IoU")][2:] == [f"{label}/IoU" for label in LABELS]
    assert 0 < entry["Overall/IoU"] < 1


def test_evaluate_command_writes_json(setup: dict, capsys) -> None:
    tmp = setup["tmp"]
    args = ["evaluate", "--predictions", str(tmp / "classes"), "--masks", str(tmp / "pairs.csv")]
    assert main(args) == 0
    written = json.loads((tmp / "classes" / "evaluation.json").read_text())
    assert written["cm_macro"] == setup["expected"].tolist()
    out = capsys.readouterr().out
    assert "Overall" in out and "building" in out

    output = tmp / "scores.json"
    assert main([*args, "--output", str(output)]) == 0
    assert json.loads(output.read_text())["Average/IoU"] == written["Average/IoU"]
    # the CSV of masks as output, or a folder: refused, the CSV untouched
    before = (tmp / "pairs.csv").read_bytes()
    capsys.readouterr()
    assert main([*args, "--output", str(tmp / "pairs.csv")]) == 2
    assert "it is the CSV of masks read" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp)]) == 2
    assert "a folder; give the JSON file to write" in capsys.readouterr().err
    assert (tmp / "pairs.csv").read_bytes() == before
    # a file where its folder should be: the system's reason, one line, no traceback
    assert main([*args, "--output", str(tmp / "pairs.csv" / "scores.json")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {tmp / 'pairs.csv'}") and "Traceback" not in line


def test_evaluate_run_predicts_first(setup: dict) -> None:
    tmp = setup["tmp"]
    args = ["evaluate", "--run", str(setup["checkpoint"]), "--csv", str(tmp / "pairs.csv")]
    assert main([*args, *TILING]) == 0
    folder = tmp / "run" / "evaluation" / "pairs"
    entry = json.loads((folder / "evaluation.json").read_text())
    assert entry["cm_macro"] == setup["expected"].tolist()
    assert entry["checkpoint"] == str(setup["checkpoint"])
    assert sorted(p.name for p in folder.glob("*.tif")) == ["s1.tif", "s2.tif"]


def test_missing_prediction_names_the_row(setup: dict, tmp_path: Path, capsys) -> None:
    tmp = setup["tmp"]
    (tmp_path / "s1.tif").write_bytes((tmp / "classes" / "s1.tif").read_bytes())
    with pytest.raises(LandsegError, match=r"pairs.csv, row 2: no prediction s2.tif"):
        evaluate_predictions(tmp_path, tmp / "pairs.csv")
    assert main(["evaluate", "--predictions", str(tmp_path)]) == 2
    assert "--predictions DIR --masks CSV" in capsys.readouterr().err


def test_onehot_masks_of_the_demo(demo_dir: Path, setup: dict, tmp_path: Path) -> None:
    """Demo tiles: one-hot masks whose all-zero holes count nowhere."""
    checkpoint = str(setup["checkpoint"])
    test_csv = demo_dir / "test.csv"
    assert main(["predict", "--run", checkpoint, "--input", str(test_csv), "--output",
                 str(tmp_path), *TILING]) == 0  # fmt: skip
    entry = evaluate_predictions(tmp_path, test_csv)
    rows = test_csv.read_text().split()
    masks = [read(demo_dir / row.split(",")[1]) for row in rows]
    labelled = sum(int(m.any(axis=0).sum()) for m in masks)
    assert entry["pixels"] == labelled < sum(m[0].size for m in masks)
    # class names come from the prediction files' tags
    assert "water/IoU" in entry


def test_evaluate_with_output_to_a_file_follows_train_s_progress_rule(
    setup: dict, tmp_path: Path, capsys
) -> None:
    """40 scenes, stderr not a terminal: at most one progress line every 30 s, as training
    (rich printed every scene's finished bar at the end: one line per input file)."""
    import shutil
    import time

    tmp = setup["tmp"]
    rows = []
    for index in range(40):
        name = ("s1", "s2")[index % 2]
        image = shutil.copy(tmp / "img" / f"{name}.tif", tmp_path / f"t{index:02d}.tif")
        rows.append(f"{image},{tmp / 'msk' / f'{name}_mask.tif'}")
    (tmp_path / "forty.csv").write_text("\n".join(rows) + "\n")
    args = ["evaluate", "--run", str(setup["checkpoint"]), "--csv", str(tmp_path / "forty.csv")]
    args += ["--tile", "32", "--overlap", "8", "--device", "cpu"]  # progress on
    args += ["--predictions", str(tmp_path / "predicted")]
    start = time.monotonic()
    assert main(args) == 0
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert len(list((tmp_path / "predicted").glob("t*.tif"))) == 40
    progress = [line for line in err.splitlines() if "tiles" in line]
    assert len(progress) <= elapsed // 30, err
    assert all(line.startswith("predict: scene ") for line in progress), err


def test_plain_progress_lines_at_most_one_per_interval() -> None:
    import io

    from landseg.inference.scene import PlainProgress

    now = [0.0]
    stream = io.StringIO()
    with PlainProgress(stream, interval_s=30, clock=lambda: now[0]) as progress:
        for index in range(40):
            task = progress.add_task(f"t{index:02d}.tif", total=10, unit="tiles")
            for _ in range(10):
                now[0] += 1.0  # 400 s in all
                progress.advance(task, 1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 400 // 30
    assert lines[0] == "predict: scene 3 (t02.tif) 10/10 tiles | 0:00:30"
