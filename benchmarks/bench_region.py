"""A whole-region prediction job (``landseg predict --output DIR``) on a large generated scene.

Run by hand, never in CI. The scene is a tiled (256 x 256), deflate-compressed, 3-band uint8
GeoTIFF of ``--size`` x ``--size`` pixels, written a strip at a time (never whole in memory);
the model an untrained lightunet (landseg's registry, 3 bands, 2 classes, seeded), saved as a
checkpoint. Every ``landseg predict`` is the job command a user runs (``--output DIR``, classes,
``--tile``/``--overlap``/``--batch-size``), with ``--threads`` torch threads (also in children).

Figures (the issue's targets in brackets):

- ``rss``: peak RSS of a fresh ``landseg predict`` process (its own ``VmHWM`` at exit, see
  :data:`PEAK_AT_EXIT`) on the large scene against the same on a scene ``--small`` pixels wide
  [large / small <= 1.2];
- ``speed``: megapixels per second of the job (in this process, model loaded once by the job as
  a user's command does) against the hand-written sliding window of ``bench_predict``
  (``hand_predict``: the whole scene read at once, no blending, plain GeoTIFF) on the same
  scene, tile, overlap and batch size [landseg / hand >= 0.9]; the hand window holds the whole
  scene as float32 (12 bytes a pixel: 4.8 GB at 20 000 x 20 000), so ``--no-hand`` skips it;
- ``nodata``: the job on an all-nodata scene of the same size against the job on the scene
  [< 1 %];
- ``resume``: a child job killed (SIGKILL) once its staging record says 90 % of the rows are
  on disk, then the same command again: its wall time against an uninterrupted child job's
  (both include the interpreter's start and the model's load) [< 15 %].

    nice python -m benchmarks.bench_region --size 20000 --small 2000 --threads 1

Where the 20 000 x 20 000 job takes too long (hours on a shared 2-core machine), ``--height H``
makes the large scene the full width but ``H`` rows (every buffer of a prediction is a strip of
the full width, so the peak is reached in the first strips), and ``--rss-only`` runs the two
fresh jobs of the ``rss`` figure alone, ``--nodata-only`` the two in-process jobs of the
``nodata`` figure alone; ``--ranks N`` compares one process with ``mpiexec -n N`` on the large
scene (cut among the ranks in pieces of rows).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from benchmarks.bench_predict import hand_predict, new_task, save_checkpoint
from benchmarks.common import (
    REPO,
    add_threads_argument,
    apply_threads,
    bytecode_env,
    load_average,
    report,
)

#: The child: ``landseg`` with its arguments, writing its own peak RSS (``VmHWM``, in MiB) to
#: the file named first when it exits. Not ``ru_maxrss`` from ``wait4``: Linux keeps in it the
#: RSS of the process before ``exec`` (a fork of this benchmark, holding the hand window's
#: scene), whereas ``VmHWM`` belongs to the new program's memory alone.
PEAK_AT_EXIT = """
import atexit, pathlib, runpy, sys
out = pathlib.Path(sys.argv[1])
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            out.write_text(str(round(int(line.split()[1]) / 1024, 1)))
atexit.register(peak)
sys.argv = ["landseg", *sys.argv[2:]]
runpy.run_module("landseg.cli.main", run_name="__main__")
"""
TRANSFORM = Affine(0.5, 0.0, 640_003.0, 0.0, -0.5, 6_860_001.0)
STRIP = 256


def scene(
    path: Path, size: int, nodata_only: bool = False, seed: int = 0, height: int | None = None
) -> Path:
    """A tiled 3-band uint8 scene ``size`` wide and ``height`` (default ``size``) high, nodata
    255, written a strip of rows at a time."""
    height = height or size
    profile = {
        "driver": "GTiff", "count": 3, "height": height, "width": size, "dtype": "uint8",
        "crs": "EPSG:32631", "transform": TRANSFORM, "nodata": 255, "tiled": True,
        "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    rng = np.random.default_rng(seed)
    x = np.arange(size, dtype=np.float32)[None]
    with rasterio.open(path, "w", **profile) as dst:
        for first in range(0, height, STRIP):
            rows = min(STRIP, height - first)
            if nodata_only:
                dst.write(
                    np.full((3, rows, size), 255, np.uint8), window=Window(0, first, size, rows)
                )
                continue
            y = np.arange(first, first + rows, dtype=np.float32)[:, None]
            base = 110 + 60 * np.sin(x / 7.0) * np.cos(y / 11.0) + 30 * np.sin((x + y) / 53.0)
            noise = rng.normal(0, 20, (3, rows, size)).astype(np.float32)
            bands = base[None] + noise + np.arange(3, dtype=np.float32)[:, None, None] * 10
            dst.write(np.clip(bands, 0, 250).astype(np.uint8), window=Window(0, first, size, rows))
    return path


def command(checkpoint: Path, source: Path, output: Path, args: argparse.Namespace) -> list[str]:
    return ["predict", "--run", str(checkpoint), "--input", str(source), "--output", str(output),
            "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch-size",
            str(args.batch_size), "--no-progress", "--device", "cpu"]  # fmt: skip


def child_job(arguments: list[str], folder: Path, kill_at: float | None = None,
              record: Path | None = None, height: int = 0,
              launcher: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """``landseg predict`` in a fresh interpreter: wall seconds, peak RSS (MiB), exit status;
    with ``kill_at``, SIGKILLed once ``record`` says that fraction of the rows is on disk;
    ``launcher``: the command it runs under (``mpiexec -n 2``; the peak is then one rank's)."""
    env = bytecode_env(folder / "pycache")
    if launcher:  # no MPI variables of an enclosing launch
        env = {k: v for k, v in env.items() if not k.startswith(("PMI_", "OMPI_", "MPI_"))}
    start = time.perf_counter()
    hwm = folder / "vmhwm.txt"
    hwm.unlink(missing_ok=True)
    process = subprocess.Popen(
        [*launcher, sys.executable, "-c", PEAK_AT_EXIT, str(hwm), *arguments], env=env,
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rows = 0
    if kill_at is not None and record is not None:
        while process.poll() is None:
            try:
                rows = int(json.loads(record.read_text())["rows_done"])
            except (OSError, ValueError, KeyError):
                rows = 0
            if rows >= kill_at * height:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    process.wait()
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        # None when killed: the process wrote no figure
        "peak_rss_mib": float(hwm.read_text()) if hwm.is_file() else None,
        "exit": process.returncode,
        **({"killed_at_rows": rows} if kill_at is not None else {}),
    }


def in_process_job(arguments: list[str]) -> float:
    from landseg.cli.main import main

    start = time.perf_counter()
    assert main(arguments) == 0
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="the large scene's side (px)")
    parser.add_argument("--small", type=int, default=2_000, help="the small scene's side (px)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-hand", action="store_true", help="skip the hand window (memory)")
    parser.add_argument(
        "--height",
        type=int,
        default=None,
        help="the large scene's height (default --size): a scene of the full "
        "width but fewer rows, for the peak RSS when the full one takes too long",
    )
    parser.add_argument(
        "--rss-only", action="store_true", help="only the peak RSS figure (two fresh jobs)"
    )
    parser.add_argument("--nodata-only", action="store_true",
                        help="only the nodata figure (the scene's and the all-nodata scene's "
                        "jobs in this process)")  # fmt: skip
    parser.add_argument(
        "--ranks",
        type=int,
        default=None,
        help="only the MPI figure: the large scene predicted by one process and by "
        "mpiexec -n RANKS (cut in pieces of rows among the ranks)",
    )
    parser.add_argument("--folder", type=Path, default=None, help="work folder (default: tmp)")
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    load_before = load_average()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench_region_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = run(folder, args)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    report("region", result, load_before)


def run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    task = new_task(0).eval()
    checkpoint = save_checkpoint(task, folder / "model.ckpt")
    inputs = {name: folder / "inputs" / name for name in ("large", "small", "empty")}
    for path in inputs.values():
        path.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    large = scene(inputs["large"] / "large.tif", args.size, height=args.height)
    small = scene(inputs["small"] / "small.tif", args.small)
    written = round(time.perf_counter() - start, 1)
    megapixels = args.size * (args.height or args.size) / 1e6

    common = {"size": args.size, "height": args.height or args.size, "small": args.small,
              "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size,
              "scenes_written_s": written}  # fmt: skip
    if args.ranks:
        return {**common, "ranks": ranks_figure(checkpoint, large, folder, args)}
    empty = inputs["empty"] / "empty.tif"
    if not args.rss_only:
        scene(empty, args.size, nodata_only=True, height=args.height)
    if args.nodata_only:  # the two in-process jobs of the speed and nodata figures
        job_seconds = in_process_job(command(checkpoint, large, folder / "speed", args))
        empty_seconds = in_process_job(command(checkpoint, empty, folder / "empty", args))
        return {**common, "nodata": {"job_s": round(job_seconds, 2),
                                     "empty_s": round(empty_seconds, 3),
                                     "ratio": round(empty_seconds / job_seconds, 4),
                                     "target": "< 0.01"}}  # fmt: skip

    # peak RSS of fresh processes (and the uninterrupted job's wall time, for the resume)
    small_child = child_job(command(checkpoint, small, folder / "rss-small", args), folder)
    large_child = child_job(command(checkpoint, large, folder / "rss-large", args), folder)
    rss = {
        "small": small_child,
        "large": large_child,
        "ratio": round(large_child["peak_rss_mib"] / small_child["peak_rss_mib"], 3),
        "large_mpx_s": round(megapixels / large_child["seconds"], 3),
        "target": "<= 1.2",
    }
    if args.rss_only:
        return {**common, "rss": rss}

    # throughput in this process: the job against the hand window, same tiles
    job_seconds = in_process_job(command(checkpoint, large, folder / "speed", args))
    hand_seconds = None
    if not args.no_hand:
        start = time.perf_counter()
        with torch.inference_mode():
            hand_predict(task.model.eval(), large, folder / "hand.tif", args)
        hand_seconds = time.perf_counter() - start
    empty_seconds = in_process_job(command(checkpoint, empty, folder / "empty", args))

    # resume after a kill at 90 %
    out = folder / "resume"
    record = out / ".predict" / "partial" / "large.json"
    height = args.height or args.size
    killed = child_job(command(checkpoint, large, out, args), folder, 0.9, record, height)
    resumed = child_job(command(checkpoint, large, out, args), folder)
    with (
        rasterio.open(out / "large.tif") as a,
        rasterio.open(folder / "rss-large" / "large.tif") as b,
    ):
        same = bool(np.array_equal(a.read(1), b.read(1)))
    hand_mpx = None if hand_seconds is None else round(megapixels / hand_seconds, 3)
    return {
        **common, "rss": rss,
        "speed": {"job_s": round(job_seconds, 2), "job_mpx_s": round(megapixels / job_seconds, 3),
                  "hand_s": None if hand_seconds is None else round(hand_seconds, 2),
                  "hand_mpx_s": hand_mpx,
                  "ratio": None if hand_seconds is None else round(hand_seconds / job_seconds, 3),
                  "target": ">= 0.9"},
        "nodata": {"empty_s": round(empty_seconds, 3),
                   "ratio": round(empty_seconds / job_seconds, 4), "target": "< 0.01"},
        "resume": {"full": large_child, "killed": killed, "resumed": resumed,
                   "ratio": round(resumed["seconds"] / large_child["seconds"], 3),
                   "same_raster": same, "target": "< 0.15"},
    }  # fmt: skip


def ranks_figure(
    checkpoint: Path, large: Path, folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The large scene by one process, then by ``mpiexec -n RANKS`` (the scene cut in pieces
    of rows among the ranks, assembled by rank 0): wall times of the whole commands, their
    ratio, and whether the rasters are the same bytes. A scene is cut only when each piece
    gets at least 16 tile strides (3 584 rows at tile 256, overlap 32): ``--size 8000`` at
    least for two ranks."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    small = folder / "inputs" / "small" / "small.tif"  # first: the children's bytecode cached
    child_job(command(checkpoint, small, folder / "warm-up", args), folder)
    one = child_job(command(checkpoint, large, folder / "one-rank", args), folder)
    many = child_job(command(checkpoint, large, folder / "ranks", args), folder,
                     launcher=(str(mpiexec), "-n", str(args.ranks)))  # fmt: skip
    same = (folder / "one-rank" / "large.tif").read_bytes() == (
        folder / "ranks" / "large.tif"
    ).read_bytes()
    return {"ranks": args.ranks, "one_process": one, "mpiexec": many,
            "speedup": round(one["seconds"] / many["seconds"], 3), "same_bytes": same}  # fmt: skip


if __name__ == "__main__":
    main()
