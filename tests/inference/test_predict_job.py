"""Prediction jobs (``landseg predict --output DIR``): finished inputs skipped, a scene stopped
half way continued from its strips, byte for byte; another model or setting refused.

The model is the untrained demo lightunet of test_scene (fixed random weights); outputs are
float32 probabilities, so that any difference in a single value shows in the bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from rasterio.transform import Affine

from landseg.cli.main import build_parser, main
from landseg.cli.predict import _begin, plan_predict
from landseg.core.errors import LandsegError
from landseg.core.signals import StopSignals
from landseg.inference.job import PredictJob, cut_rows, share_pieces
from landseg.inference.scene import (
    LoadedModel,
    PredictionStopped,
    PredictOptions,
    Tiling,
    grid_anchor,
    predict_scene,
    tile_count,
)
from landseg.maps.mosaic import write_mosaic
from tests.helpers import (
    TRANSFORM,
    demo_task,
    save_checkpoint,
    scene_pixels,
    scontrol_calls,
    sigkill_when,
    single_thread,
    slurm_env,
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


def aoi_file(path: Path, left: float, top: float, right: float, bottom: float) -> Path:
    """A GeoJSON area of interest: one rectangle, in the scenes' CRS (EPSG:32631)."""
    ring = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    feature = {"type": "Feature", "properties": {},
               "geometry": {"type": "Polygon", "coordinates": [ring]}}  # fmt: skip
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}}
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": [feature]}))
    return path


@pytest.mark.slow
def test_a_job_killed_twice_gives_the_same_maps_and_predicts_no_scene_twice(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """12 scenes (two all nodata, two sharing a border, one outside the area of interest, one
    tall), with polygons: SIGKILL once after a few scenes are finished (how many: drawn), once
    in the middle of the tall scene; the job continued ends with the rasters, polygons,
    mosaic and areas of an uninterrupted job, and sent every scene through the model once
    (the tall one from the strips it had on disk, the nodata and outside ones never)."""
    import random

    import numpy as np
    import pyogrio.raw

    inputs = tmp_path / "scenes"
    layout = {  # name: (height, width, columns east of the grid's origin)
        "s00": (40, 30, 0), "s01": (40, 20, 30),  # a border: one polygon in the mosaic
        "s02": (48, 40, 100), "s03": (40, 56, 200), "s04": (36, 36, 300),
        "s06": (300, 64, 500), "s07": (40, 44, 600), "s08": (44, 40, 700),
        "s10": (40, 48, 900),
    }  # fmt: skip
    for name, (height, width, east) in layout.items():
        pixels = scene_pixels(height, width, seed=int(name[1:]))
        write_scene(inputs / f"{name}.tif", pixels, TRANSFORM @ Affine.translation(east, 0))
    for name, east in (("s05", 400), ("s09", 800)):  # all nodata
        write_scene(inputs / f"{name}.tif", np.full((4, 40, 40), 255, np.uint8),
                    TRANSFORM @ Affine.translation(east, 0))  # fmt: skip
    x0, y0 = TRANSFORM.c, TRANSFORM.f  # s11 is 10 km east, the others within 500 m
    aoi = aoi_file(tmp_path / "aoi.geojson", x0 - 10, y0 + 10, x0 + 600, y0 - 600)
    write_scene(inputs / "s11.tif", scene_pixels(40, 40, seed=11),
                TRANSFORM @ Affine.translation(20_000, 0))  # fmt: skip
    names = sorted(inputs.glob("*.tif"))
    assert len(names) == 12

    reference = tmp_path / "reference"
    common = ["--run", str(run), "--input", str(inputs), "--vectorize", "--aoi", str(aoi),
              *COMMON]  # fmt: skip
    assert main(["predict", *common, "--output", str(reference)]) == 0
    out = tmp_path / "out"
    job = PredictJob(out)
    command = ["predict", *common, "--output", str(out)]

    def finished() -> int:
        return sum(job.is_done(p) for p in names)

    enough = random.Random(26).randint(2, 5)  # the first kill's moment, drawn (seeded)
    assert sigkill_when(command, lambda: finished() >= enough) == -signal.SIGKILL
    early = {p.name: job.done_record(p) for p in names if job.is_done(p)}
    assert enough <= len(early) < len(names)
    rows_then = {p: job.rows_done(p) for p in names}

    tall = inputs / "s06.tif"

    def half_way() -> bool:  # the tall scene has rows on disk from the second launch, not all
        return rows_then[tall] < job.rows_done(tall) and not job.is_done(tall)

    assert sigkill_when(command, half_way) == -signal.SIGKILL
    cut = {p.name: job.rows_done(p) for p in names if not job.is_done(p) and job.rows_done(p)}
    assert list(cut) == ["s06.tif"], "killed in the middle of the tall scene"

    capsys.readouterr()
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"s06.tif: continued from row {cut['s06.tif']} of 300" in printed
    assert rasters(out) == rasters(reference)
    for name in ("mosaic.vrt", "areas.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert "(1 piece(s) joined)" in printed  # s00 and s01 across their border
    for name in ["mosaic.gpkg", *(f"{p.stem}.gpkg" for p in names)]:
        read = [pyogrio.raw.read(folder / name) for folder in (out, reference)]
        assert list(read[0][2]) == list(read[1][2]), name  # the same polygons, in order
        assert [list(f) for f in read[0][3]] == [list(f) for f in read[1][3]], name
    for name, record in early.items():  # not predicted again
        assert job.done_record(inputs / name) == record
    whole = PredictJob(reference)
    for source in names:  # every other scene sent through the model once, tile for tile
        if source.name not in cut and rows_then[source] == 0:
            assert job.done_record(source)["tiles"] == whole.done_record(source)["tiles"]
    replayed = job.done_record(tall)["tiles"] - whole.done_record(tall)["tiles"]
    assert 0 < replayed <= 2 * 3  # the tile rows blending into the row continued from
    for name in ("s05.tif", "s09.tif", "s11.tif"):  # nodata, outside: no model call
        assert job.done_record(inputs / name)["tiles"] == 0
    assert not any(out.glob(".*.tmp")) and not list((out / ".predict" / "partial").iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_ends_at_a_strip_and_the_same_command_continues(
    signum: int,
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM (scancel) and SLURM's SIGUSR1 end the command at the next strip: the rows on
    disk are kept, exit 128 + the signal as train, the message says to run the same command
    again, and under SLURM SIGUSR1 requeues the job as train's does."""
    import os
    import threading
    import time

    for key, value in slurm_env(tmp_path).items():
        monkeypatch.setenv(key, value)

    inputs = scenes(tmp_path / "scenes", [(400, 64)])
    out = tmp_path / "out"
    job = PredictJob(out)
    scene = inputs / "s00.tif"

    def terminate_half_way() -> None:
        deadline = time.monotonic() + 60
        while job.rows_done(scene) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signum)  # to this process: main() handles it

    command = ["predict", "--run", str(run), "--input", str(inputs), "--output", str(out)]
    sender = threading.Thread(target=terminate_half_way)
    sender.start()
    try:
        assert main([*command, *COMMON]) == 128 + signum
    finally:
        sender.join()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"interrupted: stopped by {name} after ")
    if signum == signal.SIGUSR1:
        assert scontrol_calls(tmp_path) == ["requeue 4242"]
        assert " of 400 rows of s00; SLURM job 4242 requeued" in last
    else:
        assert scontrol_calls(tmp_path) == []
        assert last.endswith(" of 400 rows of s00; run the same command again to continue")
    rows = job.rows_done(scene)
    assert 0 < rows < 400 and not (out / "s00.tif").exists()
    assert main([*command, *COMMON]) == 0
    assert f"s00.tif: continued from row {rows} of 400" in capsys.readouterr().out
    assert job.is_done(scene)


# ---------------------------------------------------------------------------- nodata, AOI


def counting(model: LoadedModel) -> list[int]:
    """Count the tiles ``model`` is given (patched on this instance only)."""
    calls: list[int] = []
    forward = model.tile_probabilities

    def counted(tiles, batch_size):  # type: ignore[no-untyped-def]
        calls.append(len(tiles))
        return forward(tiles, batch_size)

    model.tile_probabilities = counted  # type: ignore[method-assign]
    return calls


def test_tiles_wholly_nodata_cost_no_model_call(task, tmp_path: Path) -> None:
    """All-nodata tiles are written as nodata without the model; the valid pixels are those
    of a prediction that sent every tile through it."""
    import numpy as np
    import rasterio

    from landseg.inference.scene import blended_strips, encode_strip

    model = LoadedModel.from_task(task)
    calls = counting(model)
    pixels = scene_pixels(90, 120, seed=5)
    pixels[:, :, :70] = 255  # nodata in every band: the left 70 columns
    half = write_scene(tmp_path / "half.tif", pixels)
    empty = write_scene(tmp_path / "empty.tif", np.full((4, 90, 120), 255, np.uint8))
    options = PredictOptions(Tiling(32, 8, 8), "float32")
    anchor = grid_anchor(TRANSFORM)
    predict_scene(model, empty, tmp_path / "out" / "empty.tif", options)
    assert calls == []
    with rasterio.open(tmp_path / "out" / "empty.tif") as out:
        assert np.isnan(out.read()).all()

    predict_scene(model, half, tmp_path / "out" / "half.tif", options)
    columns = len(options.tiling.starts(120, anchor[1]))
    assert 0 < sum(calls) < tile_count(90, 120, options.tiling, anchor)
    assert sum(calls) % (tile_count(90, 120, options.tiling, anchor) // columns) == 0

    with rasterio.open(half) as src:  # every tile through the model, as before
        raw = src.read().astype(np.float32) / 255

    def every_tile(first: int, stop: int) -> tuple[np.ndarray, None]:
        return raw[:, first:stop], None

    valid = (pixels != 255).all(axis=0)
    expected = np.concatenate(
        [
            encode_strip(probs, valid[row : row + probs.shape[1]], "float32")
            for row, probs, _ in blended_strips(model, every_tile, 90, 120, options.tiling, anchor)
        ],
        axis=1,
    )
    with rasterio.open(tmp_path / "out" / "half.tif") as out:
        np.testing.assert_allclose(out.read(), expected, rtol=0, atol=1e-6)


def written_blocks(path: Path) -> int:
    """The blocks of a tiled GeoTIFF that are on disk (GDAL's sparse files leave out blocks
    that are nodata everywhere)."""
    import rasterio
    from rasterio.errors import RasterBlockError

    count = 0
    with rasterio.open(path) as src:
        for (row, col), _ in src.block_windows(1):
            try:
                src.block_size(1, row, col)
                count += 1
            except RasterBlockError:
                pass
    return count


def test_rows_all_nodata_are_neither_normalised_nor_stored_nor_recorded(
    task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an all-nodata scene (or margin) still cost besides the model: its pixels scaled
    and blended, its nodata blocks compressed into the staging raster, and a synced record
    after every strip. None of it is left; the raster is the same."""
    import numpy as np
    import rasterio

    from landseg.inference.scene import Normalization

    model = LoadedModel.from_task(task)
    calls = counting(model)
    scaled: list[int] = []  # rows normalised
    normalize = Normalization.__call__

    def counted(self: Normalization, raw: np.ndarray) -> np.ndarray:
        scaled.append(raw.shape[1])
        return normalize(self, raw)

    monkeypatch.setattr(Normalization, "__call__", counted)
    pixels = scene_pixels(200, 64, seed=6)
    pixels[:, 40:] = 255  # data in the top 40 rows only
    top = write_scene(tmp_path / "top.tif", pixels)
    empty = write_scene(tmp_path / "empty.tif", np.full((4, 200, 64), 255, np.uint8))
    options = PredictOptions(Tiling(32, 8, 8), "float32")
    job = PredictJob(tmp_path / "job")
    records: dict[str, list[int]] = {}
    for source in (empty, top):
        part = job.part(source, 200, 64)
        part.record = records.setdefault(source.stem, []).append  # type: ignore[method-assign]
        predict_scene(model, source, job.folder / source.name, options, part=part)
    with rasterio.open(job.folder / "empty.tif") as out:
        assert np.isnan(out.read()).all()
    assert records["empty"] == [] and written_blocks(job.part(empty, 200, 64).staging) == 0
    # the top scene: its data rows and the tile rows reaching into them, no more
    assert 40 <= sum(scaled) <= 40 + 2 * 32 and sum(calls) > 0
    assert records["top"] and max(records["top"]) <= 80
    staging = job.part(top, 200, 64).staging
    assert written_blocks(staging) == 3  # blocks 16 rows high: the rows 0-47 holding data
    whole = predict_scene(model, top, tmp_path / "whole" / "top.tif", options)
    assert (job.folder / "top.tif").read_bytes() == whole.read_bytes()


def test_an_area_of_interest_limits_the_prediction(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside the polygons: nodata and no model call; a scene outside them is not read."""
    import numpy as np
    import rasterio

    inputs = scenes(tmp_path / "scenes", [(60, 80), (60, 80)])
    far = (TRANSFORM.c, TRANSFORM.f)
    with rasterio.open(inputs / "s01.tif", "r+") as moved:  # 10 km east: outside the polygon
        moved.transform = Affine.translation(10_000, 0) @ TRANSFORM
    x0, y0 = far
    polygon = [[x0, y0], [x0 + 20, y0], [x0 + 20, y0 - 30], [x0, y0 - 30], [x0, y0]]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}},
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Polygon", "coordinates": [polygon]},
                    }
                ],
            }
        )
    )
    out = tmp_path / "out"
    command = ["predict", "--run", str(run), "--input", str(inputs), "--output", str(out)]
    assert main([*command, "--aoi", str(aoi), *COMMON]) == 0
    job = PredictJob(out)
    assert job.done_record(inputs / "s01.tif")["tiles"] == 0  # outside: nothing predicted
    assert 0 < job.done_record(inputs / "s00.tif")["tiles"] < 12
    with rasterio.open(out / "s00.tif") as a, rasterio.open(out / "s01.tif") as b:
        inside = a.read(1) != 255
        assert (b.read(1) == 255).all()
    assert inside[:60, :40].all() and not inside[:, 40:].any()  # 20 m x 30 m at 0.5 m

    aoi.write_text(aoi.read_text().replace('"properties": {}', '"properties": {"v": 1}'))
    capsys.readouterr()
    assert main([*command, "--aoi", str(aoi), *COMMON]) == 2
    assert "another aoi_sha256: " in capsys.readouterr().err
    assert np.count_nonzero(inside) == 60 * 40


# ---------------------------------------------------------------------------- pieces


def test_a_tall_scene_is_cut_in_pieces_of_whole_tile_rows_and_shared_as_units() -> None:
    stride = Tiling(32, 8).stride  # 24: a piece holds at least 16 strides, in 256-row steps
    assert cut_rows(1024, 2, stride) == [(0, 512), (512, 1024)]
    assert cut_rows(1100, 3, stride) == [(0, 512), (512, 1100)]  # not 3 pieces under 512
    assert cut_rows(1537, 3, stride) == [(0, 512), (512, 1024), (1024, 1537)]  # even pieces
    assert cut_rows(1000, 2, stride) == [(0, 1000)]  # too small to cut
    assert cut_rows(20_000, 16, 224) == [(0, 4096), (4096, 7936), (7936, 12032),
                                         (12032, 15872), (15872, 20000)]  # fmt: skip
    a, b, v = Path("a.tif"), Path("b.tif"), Path("v.vrt")
    cut = {v: [(0, 512), (512, 1024), (1024, 1100)]}
    # units sorted by path and first row: a, b, v[0], v[512], v[1024]; unit k to rank k mod 2
    assert share_pieces([v, b, a], cut, (0, 2)) == ([a, v], {v: [(0, 512), (1024, 1100)]})
    assert share_pieces([v, b, a], cut, (1, 2)) == ([b, v], {v: [(512, 1024)]})


def test_a_scene_cut_in_pieces_is_assembled_into_the_scene_predicted_whole(
    task, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``mpiexec`` does to a tall scene, in one process: cut in pieces of rows (as rank 0
    records it), one piece finished, the other stopped half way; the same command without MPI
    continues the piece left and assembles them: the raster is the scene's predicted whole,
    byte for byte, the rows already on disk are not predicted again, nothing is left over."""
    inputs = scenes(tmp_path / "scenes", [(1024, 40), (40, 40)])
    tall = inputs / "s00.tif"
    common = ["predict", "--run", str(run), "--input", str(inputs), "--type", "float32", *COMMON]
    one, out = tmp_path / "one", tmp_path / "out"
    assert main([*common, "--output", str(one)]) == 0
    options = PredictOptions(Tiling(32, 8), "float32")
    job = PredictJob(out)
    pieces = cut_rows(1024, 2, options.tiling.stride)
    job.cut(tall, pieces)
    job.cut(tall, [(0, 1024)])  # an earlier cut stands: its pieces' progress is in its terms
    assert job.pieces(tall) == pieces == [(0, 512), (512, 1024)]
    model = LoadedModel.from_task(task)
    first = job.part(tall, 1024, 40, pieces[0])
    assert predict_scene(model, tall, out / "s00.tif", options, part=first) == first.staging
    assert first.done and not (out / "s00.tif").exists()  # a piece is no COG of its own
    second = job.part(tall, 1024, 40, pieces[1])
    asked = iter([None, None, signal.SIGTERM])
    with pytest.raises(PredictionStopped, match=r"after 560 of 1024 rows of s00"):
        predict_scene(model, tall, out / "s00.tif", options, part=second,
                      stop=lambda: next(asked))  # fmt: skip
    tiles_then = first.tiles + job.part(tall, 1024, 40, pieces[1]).tiles

    capsys.readouterr()
    assert main([*common, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "s00.tif: rows 512-1024 of 1024, continued from row 560" in printed
    assert "s00.tif: 2 pieces assembled into s00.tif" in printed
    assert rasters(out) == rasters(one)
    row_of_tiles = len(options.tiling.starts(40, grid_anchor(TRANSFORM)[1]))
    whole = PredictJob(one).done_record(tall)["tiles"]
    tiles = job.done_record(tall)["tiles"]
    # the tile rows above each cut, and above the row it continued from, predicted again
    assert tiles_then < tiles <= whole + 4 * row_of_tiles
    assert not list((out / ".predict" / "partial").iterdir())


@dataclass(frozen=True)
class FakeRanks:
    """A rank of an ``mpiexec -n size`` launch, in one process: ``agree(failure)`` is what
    the meetings of the ranks do here (by default, every other rank is fine)."""

    size: int
    rank: int = 0
    agree: Callable[[BaseException | None], None] = lambda failure: None

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size


def test_mpiexec_cuts_no_scene_begun_whole_and_no_cut_of_an_input_since_changed(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``mpiexec -n 2``: a scene that a plain launch left half way is continued whole
    (cut, its rows on disk would be predicted again); a cut recorded when the input was 512
    rows high is not kept once it is 1024 (its pieces would leave rows 512-1024 out of the
    assembled raster, silently): the scene is cut again, the old pieces' files removed."""
    inputs = scenes(tmp_path / "scenes", [(1024, 40), (1024, 40)])
    begun, grown = inputs / "s00.tif", inputs / "s01.tif"
    out = tmp_path / "out"
    job = PredictJob(out)
    job.part(begun, 1024, 40).record(480)
    job.part(begun, 1024, 40).staging.write_bytes(b"rows on disk")
    job.cut(grown, [(0, 256), (256, 512)])
    job.part(grown, 512, 40, (256, 512)).record(384)
    old = job.part(grown, 512, 40, (256, 512))
    old.staging.write_bytes(b"old piece")
    monkeypatch.setattr("landseg.cli.predict._ranks", lambda: FakeRanks(2))
    args = build_parser().parse_args(["predict", "--run", str(run), "--input", str(inputs),
                                      "--output", str(out), *COMMON])  # fmt: skip
    plan = plan_predict(args)
    assert plan.cut == {grown: [(0, 512), (512, 1024)]}
    assert plan.inputs == [begun, grown] and plan.rows == {grown: [(512, 1024)]}
    _begin(plan, alone=True)
    assert job.pieces(grown) == [(0, 512), (512, 1024)]
    assert not old.record_file.exists() and not old.staging.exists()
    assert job.rows_done(begun) == 480


def test_mpiexec_shares_the_work_left_and_keeps_the_most_rows_on_disk(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``mpiexec -n 2`` after a kill: the inputs finished are no unit of work (rank 0
    alone tidies them and says they were skipped), so no rank idles on them; a scene cut by
    an earlier launch, then put further on disk whole by a launch with ``--workers``, is
    continued whole (its pieces would lose those rows)."""
    inputs = scenes(tmp_path / "scenes", [(40, 40)] * 4 + [(1024, 40)])
    s00, s01, s02, s03, tall = sorted(inputs.glob("*.tif"))
    out = tmp_path / "out"
    job = PredictJob(out)
    for finished in (s00, s01):
        job.finish(finished, [], 0)
    job.cut(tall, [(0, 512), (512, 1024)])
    piece = job.part(tall, 1024, 40, (0, 512))
    piece.staging.parent.mkdir(parents=True, exist_ok=True)
    piece.staging.write_bytes(b"a piece's rows")
    piece.record(128)
    whole = job.part(tall, 1024, 40)
    whole.staging.write_bytes(b"whole rows")
    whole.record(640)
    args = build_parser().parse_args(["predict", "--run", str(run), "--input", str(inputs),
                                      "--output", str(out), *COMMON])  # fmt: skip
    plans = []
    for rank in (0, 1):
        monkeypatch.setattr("landseg.cli.predict._ranks", lambda r=rank: FakeRanks(2, r))
        plans.append(plan_predict(args))
    # the work left, s02, s03 and the tall scene whole, k mod 2
    assert [plan.inputs for plan in plans] == [[s00, s01, s02, tall], [s03]]
    assert [plan.todo for plan in plans] == [[s02, tall], [s03]]
    assert plans[0].skip_line() == "2 of 4 inputs finished in an earlier launch: skipped"
    assert plans[0].cut == plans[1].cut == {}  # 640 rows whole against 128 in pieces
    other = job.part(tall, 1024, 40, (512, 1024))
    other.staging.write_bytes(b"the other piece's rows")
    other.record(1024)  # 128 + 512 rows in pieces, 640 whole: a tie keeps the cut
    assert plan_predict(args).cut == {tall: [(0, 512), (512, 1024)]}


def test_a_rank_waiting_for_the_others_is_stopped_as_they_are(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 1 of 2 has no unit (the one input is rank 0's) and waits for rank 0 at the end;
    SIGTERM to the job then reaches it too: it must be stopped as rank 0 is (exit 128 + 15,
    one line), not killed by the signal, which makes MPI kill the ranks still predicting
    before their next strip (and SLURM's SIGUSR1 would requeue nothing)."""
    inputs = scenes(tmp_path / "scenes", [(40, 40)])
    meetings: list[BaseException | None] = []

    def agree(failure: BaseException | None) -> None:
        meetings.append(failure)
        if len(meetings) == 3:  # the last: rank 0 is still at work when the signal comes
            handler = signal.getsignal(signal.SIGTERM)
            assert isinstance(getattr(handler, "__self__", None), StopSignals), (
                "SIGTERM would kill this rank"
            )
            handler(signal.SIGTERM, None)
            raise LandsegError("rank 0 of 2 failed: stopped by SIGTERM after 24 of 40 rows")

    monkeypatch.setattr("landseg.cli.predict._ranks", lambda: FakeRanks(2, 1, agree))
    command = ["predict", "--run", str(run), "--input", str(inputs), "--output",
               str(tmp_path / "out"), *COMMON]  # fmt: skip
    assert main(command) == 128 + signal.SIGTERM
    assert meetings == [None, None, None]
    assert "interrupted: stopped by SIGTERM while waiting for the other ranks; run the same " \
        "command again to continue" in capsys.readouterr().err  # fmt: skip

    # rank 0 assembles the cut scenes once every rank is done: a signal then is not fatal
    # either; the scenes are finished (as a launch without MPI finishes the one it is at)
    def assemble(plan: Any) -> list[Path]:
        handler = signal.getsignal(signal.SIGTERM)
        assert isinstance(getattr(handler, "__self__", None), StopSignals), (
            "SIGTERM would kill rank 0"
        )
        handler(signal.SIGTERM, None)
        return []

    monkeypatch.setattr("landseg.cli.predict._ranks", lambda: FakeRanks(2, 0))
    monkeypatch.setattr("landseg.cli.predict._assemble_cut_scenes", assemble)
    assert main(command) == 0
    assert PredictJob(tmp_path / "out").is_done(inputs / "s00.tif")


# ---------------------------------------------------------------------------- shards


def test_shards_of_a_job_array_make_the_maps_of_one_process(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = scenes(tmp_path / "scenes", [(40, 40), (48, 40), (40, 56), (36, 36), (40, 44)])
    common = ["predict", "--run", str(run), "--input", str(inputs), "--type", "float32"]
    assert main([*common, "--output", str(tmp_path / "one"), *COMMON]) == 0
    out = tmp_path / "shards"
    assert main([*common, "--output", str(out), "--shard", "1/2", *COMMON]) == 0
    assert sorted(rasters(out)) == ["s01.tif", "s03.tif"]  # input k: shard k mod 2
    capsys.readouterr()
    assert main([*common, "--output", str(out), "--shard", "0/2", *COMMON]) == 0
    assert rasters(out) == rasters(tmp_path / "one")
    job = PredictJob(out)
    assert all(job.is_done(p) for p in sorted(inputs.glob("*.tif")))
    assert main([*common, "--output", str(out), *COMMON]) == 0  # all of them: nothing left
    assert "5 of 5 inputs finished in an earlier launch: skipped" in capsys.readouterr().out

    assert main([*common, "--output", str(out), "--shard", "0/2", "--overwrite", *COMMON]) == 2
    assert "--overwrite with --shard: each shard would remove" in capsys.readouterr().err
    for wrong in ("2/2", "x/2", "1"):
        with pytest.raises(SystemExit):
            main([*common, "--output", str(out), "--shard", wrong, *COMMON])
        assert f"I/N with 0 <= I < N (e.g. 0/4), got {wrong}" in capsys.readouterr().err


MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.slow
@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
def test_mpiexec_two_ranks_make_the_maps_of_one_process(run: Path, tmp_path: Path) -> None:
    """Under ``mpiexec -n 2`` each rank predicts its share of the inputs, and its share of
    the pieces of a tall VRT mosaic cut among the ranks; rank 0 alone assembles the VRT's
    pieces and writes the mosaics at the end: every file is the single process's."""
    pytest.importorskip("mpi4py")
    import pyogrio.raw

    inputs = tmp_path / "scenes"  # a and b share a border: their polygons are merged
    for name, dx, size in (("a", 0, (40, 30)), ("b", 30, (40, 20)), ("c", 50, (24, 36))):
        transform = TRANSFORM @ Affine.translation(dx, 0)
        write_scene(inputs / f"{name}.tif", scene_pixels(*size, seed=ord(name)), transform)
    stacked_vrt(inputs, "d", heights=(600, 424), width=32, dx=100)  # 1024 rows: 2 pieces
    common = ["predict", "--run", str(run), "--input", str(inputs), "--glob", "*",
              "--vectorize", *COMMON]  # fmt: skip
    one, ranks = tmp_path / "one", tmp_path / "ranks"
    assert main([*common, "--output", str(one)]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_"))}
    command = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "landseg.cli.main", *common]
    done = subprocess.run(
        [*command, "--output", str(ranks)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # units a, b, c, d rows 0-512, d rows 512-1024: unit k to rank k mod 2
    assert "MPI rank 0 of 2: 3 of 4 input(s), d.vrt rows 512-1024" in done.stdout
    assert "MPI rank 1 of 2: 2 of 4 input(s), d.vrt rows 0-512" in done.stdout
    assert done.stdout.count("d.vrt: 2 pieces assembled into d.tif") == 1  # by rank 0
    assert done.stdout.count("\n  1 polygons -> ") == 4  # each scene vectorized once
    assert done.stdout.count("mosaic of 4 raster(s)") == 1  # rank 0 alone
    for name in ("a.tif", "b.tif", "c.tif", "d.tif", "mosaic.vrt", "areas.csv"):
        assert (ranks / name).read_bytes() == (one / name).read_bytes(), name
    recorded = [json.loads((d / "predict.json").read_text()) for d in (one, ranks)]
    for record in recorded:
        del record["created"]
    assert recorded[0] == recorded[1]
    for name in ("a.gpkg", "mosaic.gpkg"):
        read = [pyogrio.raw.read(d / name) for d in (one, ranks)]
        assert list(read[0][2]) == list(read[1][2]), name  # the same polygons
        assert [list(f) for f in read[0][3]] == [list(f) for f in read[1][3]]
    assert main([*common, "--output", str(ranks)]) == 0  # one job: nothing left for one process
    assert all(PredictJob(ranks).is_done(p) for p in sorted(inputs.glob("*.*")))
    assert not list((ranks / ".predict" / "partial").iterdir())


def stacked_vrt(folder: Path, name: str, heights: tuple[int, ...], width: int, dx: int) -> Path:
    """``folder/<name>.vrt``: a VRT mosaic of scenes ``heights`` rows high, one below the
    other on the grid of the others, ``dx`` pixels east (its scenes in ``folder/<name>/``)."""
    top = 0
    for index, height in enumerate(heights):
        transform = TRANSFORM @ Affine.translation(dx, top)
        pixels = scene_pixels(height, width, seed=100 + index)
        write_scene(folder / name / f"{index}.tif", pixels, transform)
        top += height
    built = write_mosaic(folder / name, sorted((folder / name).glob("*.tif")))
    vrt = folder / f"{name}.vrt"
    vrt.write_text(built.read_text().replace('relativeToVRT="1">', f'relativeToVRT="1">{name}/'))
    built.unlink()
    return vrt


# ---------------------------------------------------------------------------- one map


def test_a_finished_job_is_one_mosaic_with_the_areas_of_its_classes(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    import numpy as np
    import rasterio

    inputs = tmp_path / "scenes"  # a and b share a border; c lies 10 px below b, 3 px right
    # (sizes are height, width; offsets x, y in pixels of the same grid)
    for name, (dx, dy), size in (("a", (0, 0), (40, 30)), ("b", (30, 0), (40, 20)),
                                 ("c", (53, 50), (24, 36))):  # fmt: skip
        transform = TRANSFORM @ Affine.translation(dx, dy)
        write_scene(inputs / f"{name}.tif", scene_pixels(*size, seed=ord(name)), transform)
    out = tmp_path / "out"
    command = ["predict", "--run", str(run), "--input", str(inputs), "--output", str(out)]
    command.append("--vectorize")
    assert main([*command, "--shard", "0/2", *COMMON]) == 0
    assert "mosaic: written when the 1 input(s) left are finished" in capsys.readouterr().out
    assert not (out / "mosaic.vrt").exists()
    assert main([*command, "--shard", "1/2", *COMMON]) == 0  # the last input: the mosaic
    printed = capsys.readouterr().out
    assert "mosaic of 3 raster(s): " in printed
    assert "polygons of 3 scene(s), merged across scene borders" in printed
    assert (out / "mosaic.gpkg").is_file()

    with rasterio.open(out / "mosaic.vrt") as mosaic:
        assert (mosaic.width, mosaic.height) == (89, 74)
        assert mosaic.transform == TRANSFORM and mosaic.crs == "EPSG:32631"
        assert mosaic.nodata == 255
        whole = mosaic.read(1)
        with rasterio.open(out / "a.tif") as a:
            assert mosaic.colormap(1) == a.colormap(1)
        for name, (dx, dy) in (("a", (0, 0)), ("b", (30, 0)), ("c", (53, 50))):
            with rasterio.open(out / f"{name}.tif") as scene:
                part = whole[dy : dy + scene.height, dx : dx + scene.width]
                assert np.array_equal(part, scene.read(1))
        assert (whole[40:50, :] == 255).all()  # between the scenes: nodata

    rows = list(csv.DictReader((out / "areas.csv").open()))
    pixels = {}
    for name in ("a", "b", "c"):
        with rasterio.open(out / f"{name}.tif") as scene:
            pixels[name] = np.bincount(scene.read(1).ravel(), minlength=256)
    for row in rows:
        k = int(row["class_id"])
        expected = sum(pixels.values())[k] if row["scene"] == "total" else pixels[row["scene"]][k]
        assert int(row["pixels"]) == expected
        assert float(row["area_map_units2"]) == pytest.approx(expected * 0.25)
        assert float(row["area_ha"]) == pytest.approx(expected * 0.25 / 10_000)
    assert [r["scene"] for r in rows].count("total") == 4

    (out / "mosaic.vrt").unlink()
    (out / "areas.csv").unlink()
    (out / "mosaic.gpkg").unlink()
    assert main(["predict", "--mosaic", str(out), "--mosaic-cog"]) == 0
    assert all((out / f"mosaic.{ext}").is_file() for ext in ("vrt", "gpkg"))
    with rasterio.open(out / "mosaic.tif") as cog:  # one COG, the mosaic's pixels
        assert np.array_equal(cog.read(1), whole)
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert (out / "areas.csv").is_file()
    capsys.readouterr()
    assert main(["predict", "--mosaic", str(tmp_path)]) == 2
    assert "no prediction job here" in capsys.readouterr().err
