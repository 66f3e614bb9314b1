"""Prediction jobs (``landseg predict --output DIR``): finished inputs skipped, a scene stopped
half way continued from its strips, byte for byte; another model or setting refused.

The model is the untrained demo lightunet of test_scene (fixed random weights); outputs are
float32 probabilities, so that any difference in a single value shows in the bytes.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from landseg.cli.main import main
from landseg.inference.job import PredictJob
from landseg.inference.scene import (
    LoadedModel,
    PredictionStopped,
    PredictOptions,
    Tiling,
    grid_anchor,
    predict_scene,
    tile_count,
)
from tests.helpers import (
    TRANSFORM,
    demo_task,
    save_checkpoint,
    scene_pixels,
    sigkill_when,
    single_thread,
    write_scene,
)

COMMON = ["--tile", "32", "--overlap", "8", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Torch on one thread, here and in the commands started: steady on a loaded machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with single_thread():
        yield


@pytest.fixture(scope="module")
def task(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return demo_task(demo_dir, tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def run(task, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(task, folder / "checkpoints" / "m-last.ckpt")
    (folder / "run.json").write_text(json.dumps({"status": "finished"}))
    return folder


def scenes(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    for index, (height, width) in enumerate(sizes):
        write_scene(folder / f"s{index:02d}.tif", scene_pixels(height, width, seed=index))
    return folder


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: its modification time and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rasters(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tif"))}


def test_a_job_skips_what_is_finished_and_refuses_another_setting(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = scenes(tmp_path / "scenes", [(40, 50), (60, 40), (50, 50)])
    out = tmp_path / "out"
    command = ["predict", "--run", str(run), "--input", str(inputs), "--output", str(out)]
    command += ["--type", "float32", *COMMON]
    assert main(command) == 0
    first = tree(out)
    assert (out / "predict.json").is_file()
    job = PredictJob(out)
    record = job.done_record(inputs / "s00.tif")
    assert [o["file"] for o in record["outputs"]] == ["s00.tif"]
    assert record["outputs"][0]["bytes"] == (out / "s00.tif").stat().st_size
    capsys.readouterr()

    assert main(command) == 0  # the same command again: nothing predicted, nothing written
    assert "3 of 3 inputs finished in an earlier launch: skipped" in capsys.readouterr().out
    assert tree(out) == first

    # another setting, another model: refused with one line naming it, nothing changed
    assert main([*command, "--tile", "48"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --output {out}: holds a prediction job with another tile: 32 -> 48; "
        "predict into another folder, or add --overwrite to start over"
    ]
    assert main([*command, "--tta"]) == 2
    assert "another tta: none -> d4;" in capsys.readouterr().err
    other = tmp_path / "other" / "checkpoints" / "m-last.ckpt"
    checkpoint = torch.load(run / "checkpoints" / "m-last.ckpt", weights_only=False)
    next(iter(checkpoint["state_dict"].values())).add_(1.0)
    other.parent.mkdir(parents=True)
    torch.save(checkpoint, other)
    (other.parent.parent / "run.json").write_text(json.dumps({"status": "finished"}))
    assert main([*command[:2], str(other), *command[3:]]) == 2
    assert "another model: " in capsys.readouterr().err
    assert tree(out) == first

    # an output deleted: that input only is predicted again, to the same bytes
    (out / "s01.tif").unlink()
    assert main(command) == 0
    assert "2 of 3 inputs finished in an earlier launch: skipped" in capsys.readouterr().out
    again = tree(out)
    assert again["s01.tif"][1] == first["s01.tif"][1]
    assert again["s00.tif"] == first["s00.tif"] and again["s02.tif"] == first["s02.tif"]

    # --overwrite starts over: every input predicted again
    assert main([*command, "--tile", "48", "--overwrite"]) == 0
    assert "skipped" not in capsys.readouterr().out
    over = tree(out)
    assert all(over[name][0] != first[name][0] for name in ("s00.tif", "s01.tif", "s02.tif"))
    assert json.loads((out / "predict.json").read_text())["settings"]["tile"] == 48


def test_a_scene_stopped_half_way_continues_from_its_strips_byte_for_byte(
    task, tmp_path: Path
) -> None:
    """A stop between two strips keeps the rows on disk; continuing recomputes only from
    there (and the few tile rows that blend into it), to the same bytes as one go."""
    model = LoadedModel.from_task(task)
    source = write_scene(tmp_path / "big.tif", scene_pixels(180, 100, seed=3))
    options = PredictOptions(Tiling(32, 16, 8), "float32")  # each row in two tile rows
    whole = predict_scene(model, source, tmp_path / "whole" / "big.tif", options)

    job = PredictJob(tmp_path / "job")
    part = job.part(source, 180, 100)
    asked = iter([None, None, None, signal.SIGTERM])
    with pytest.raises(PredictionStopped) as stopped:
        predict_scene(model, source, job.folder / "big.tif", options, part=part,
                      stop=lambda: next(asked))  # fmt: skip
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert str(stopped.value) == "stopped by SIGTERM after 48 of 180 rows of big"
    assert not (job.folder / "big.tif").exists()

    resumed = job.part(source, 180, 100)
    assert resumed.rows_done == 48 and resumed.staging.is_file()
    before = resumed.tiles
    predict_scene(model, source, job.folder / "big.tif", options, part=resumed)
    full = tile_count(180, 100, options.tiling, grid_anchor(TRANSFORM))
    assert before > 0 and resumed.tiles - before < full  # the rest and a replayed tile row
    assert (job.folder / "big.tif").read_bytes() == whole.read_bytes()


@pytest.mark.slow
def test_a_job_killed_twice_gives_the_same_maps_and_predicts_no_scene_twice(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL once after two scenes are finished, once in the middle of a scene; the job
    continued ends with the rasters of an uninterrupted job, byte for byte."""
    sizes = [(64, 64), (80, 96), (300, 96), (64, 64), (96, 64)]
    inputs = scenes(tmp_path / "scenes", sizes)
    reference = tmp_path / "reference"
    common = ["--run", str(run), "--input", str(inputs), "--type", "float32", *COMMON]
    assert main(["predict", *common, "--output", str(reference)]) == 0
    out = tmp_path / "out"
    job = PredictJob(out)
    command = ["predict", *common, "--output", str(out)]
    names = sorted(inputs.glob("*.tif"))

    def finished() -> int:
        return sum(job.is_done(p) for p in names)

    assert sigkill_when(command, lambda: finished() >= 2) == -signal.SIGKILL
    early = {p.name: json.loads(job._done_file(p).read_text()) for p in names if job.is_done(p)}
    assert 2 <= len(early) < len(names)

    def half_way() -> bool:
        return any(job.rows_done(p) > 0 for p in names if p.name not in early)

    assert sigkill_when(command, half_way) == -signal.SIGKILL
    cut = [p for p in names if not job.is_done(p) and job.rows_done(p) > 0]
    assert len(cut) == 1, "killed in the middle of a scene"
    rows = job.rows_done(cut[0])

    capsys.readouterr()
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"{cut[0].name}: continued from row {rows} of " in printed
    assert rasters(out) == rasters(reference)
    for name, record in early.items():  # not predicted again
        assert json.loads(job._done_file(inputs / name).read_text()) == record
    assert not any(out.glob(".*.tmp")) and not list((out / ".predict" / "partial").iterdir())


def test_sigterm_between_strips_exits_143_and_the_same_command_continues(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM (scancel, a scheduler's stop) ends the command at the next strip: the rows on
    disk are kept, exit 143 as train, and the message says to run the same command again."""
    import os
    import threading
    import time

    inputs = scenes(tmp_path / "scenes", [(400, 64)])
    out = tmp_path / "out"
    job = PredictJob(out)
    scene = inputs / "s00.tif"

    def terminate_half_way() -> None:
        deadline = time.monotonic() + 60
        while job.rows_done(scene) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)  # to this process: main() handles it

    command = ["predict", "--run", str(run), "--input", str(inputs), "--output", str(out)]
    sender = threading.Thread(target=terminate_half_way)
    sender.start()
    try:
        assert main([*command, *COMMON]) == 128 + signal.SIGTERM
    finally:
        sender.join()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped by SIGTERM after ")
    assert last.endswith(" of 400 rows of s00; run the same command again to continue")
    rows = job.rows_done(scene)
    assert 0 < rows < 400 and not (out / "s00.tif").exists()
    assert main([*command, *COMMON]) == 0
    assert f"s00.tif: continued from row {rows} of 400" in capsys.readouterr().out
    assert job.is_done(scene)
