"""Scenes in parallel (``landseg predict --workers N``): N processes, one model each.

Every input is checked in this process first (as :func:`~landseg.inference.scene.predict_files`
does), then the scenes are handed out one at a time to N worker processes (spawned: nothing
inherited), each holding its own model: on the GPU, worker i uses visible GPU i modulo their
count; on the CPU, the cores are shared (``cores // N`` torch threads each). One progress bar
counts the scenes. Each output is written atomically by ``predict_scene``, so a scene
interrupted half way (an error, Ctrl-C) never leaves a truncated file under its final name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landseg.core.signals import exit_on_sigterm, ignore_interrupts, requeue_signal_ignored
from landseg.inference.scene import (
    LoadedModel,
    PredictionStopped,
    PredictOptions,
    check_inputs,
    make_progress,
    predict_scene,
    prediction_path,
)
from landseg.inference.tta import with_tta
from landseg.launch.devices import cpu_share, limit_threads, pin_gpu, visible_gpus


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads its model: a checkpoint or an export, the device, the TTA mode."""

    path: Path
    portable: bool = False
    device: str = "auto"
    tta: str | None = None

    def load(self) -> Any:
        if self.portable:
            from landseg.inference.portable import PortableModel

            return with_tta(PortableModel.load(self.path, self.device), self.tta)
        return with_tta(LoadedModel.load(self.path, self.device), self.tta)


_MODEL: Any = None  # the worker's model, loaded once by _start_worker


def _start_worker(source: ModelSource, gpus: list[str], threads: int, counter: Any) -> None:
    """A worker's start: its GPU (the next one, round robin) or its share of the cores, then
    its model."""
    global _MODEL
    ignore_interrupts()  # the main process decides on stops
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if pin_gpu(index, gpus) is None:  # before torch initialises CUDA
        limit_threads(threads)
    _MODEL = source.load()
    # from now on a worker writes maps: the SIGTERM the main process sends it ends the scene
    # at hand through Python (SystemExit), so its unfinished temporary file is removed
    # (while loading, the signal's default action ends it: there is nothing to remove)
    exit_on_sigterm()


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """SIGTERM to every worker: the main process stops (Ctrl-C, SIGTERM, a worker's error),
    and a worker would otherwise finish its scene, minutes perhaps, and write it after."""
    processes = getattr(executor, "_processes", None) or {}  # the executor has no public way
    for process in list(processes.values()):
        if process.is_alive():
            process.terminate()


def _predict_one(
    source: Path, destination: Path, options: PredictOptions, part: Any = None
) -> tuple[Path, int]:
    """A worker's scene: the raster, and the tiles sent through the model for it (with
    ``part``, a job's, counted over every launch, and its rows recorded as they are written)."""
    raster = predict_scene(_MODEL, source, destination, options, part=part)
    return raster, part.tiles if part is not None else 0


def predict_files_parallel(
    model: Any,
    source: ModelSource,
    inputs: Sequence[Path],
    out_dir: Path,
    options: PredictOptions,
    workers: int,
    show_progress: bool = True,
    hint: str | None = None,
    parts: dict[Path, Any] | None = None,
    stop: Callable[[], int | None] | None = None,
    finished: Callable[[Path, Path, int], None] | None = None,
) -> list[Path]:
    """Predict ``inputs`` into ``out_dir`` with ``workers`` processes (``model``: this process's
    copy, used for the checks); returns the outputs in the order of ``inputs``.

    A prediction job's (:mod:`landseg.inference.job`): ``parts`` keep each scene's progress,
    ``finished(scene, raster, tiles)`` is called here as each scene is done, and ``stop()``
    is asked every half second: when it gives a signal, the workers are ended (SIGTERM: each
    keeps the rows its scene has on disk) and :class:`PredictionStopped` is raised.
    """
    import multiprocessing

    check_inputs(model, inputs, options, hint, out_dir)
    gpus = visible_gpus(source.device)
    threads = cpu_share(workers)
    context = multiprocessing.get_context("spawn")
    with requeue_signal_ignored():  # the resource tracker starts here, and outlives SIGUSR1
        counter = context.Value("i", 0)
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(source, gpus, threads, counter),
    )
    futures: list[Future[tuple[Path, int]]] = []
    try:  # scenes are handed out as workers become free
        futures = [
            executor.submit(
                _predict_one,
                scene,
                prediction_path(out_dir, scene),
                options,
                (parts or {}).get(scene),
            )
            for scene in inputs
        ]
        scene_of = dict(zip(futures, inputs, strict=True))
        with make_progress(show_progress) as progress:
            task = (
                progress.add_task(f"{workers} workers", total=len(inputs), unit="scenes")
                if progress
                else None
            )
            pending: set[Future[tuple[Path, int]]] = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                for future in done:
                    try:
                        raster, tiles = future.result()  # a worker's error stops everything
                    except (Exception, SystemExit) as error:  # SystemExit: a worker's SIGTERM
                        signum = stop() if stop is not None else None
                        if signum is None:
                            raise
                        # a stop signal sent to the whole group (SLURM, a terminal) ended the
                        # workers too: the stop, not their end, is what happened
                        count = len(inputs) - len(pending) - len(done)
                        where = f"after {count} of {len(inputs)} inputs"
                        raise PredictionStopped(signum, where) from error
                    if finished is not None:
                        finished(scene_of[future], raster, tiles)
                    if task is not None:
                        progress.advance(task)
                signum = stop() if stop is not None else None
                if signum is not None and pending:
                    count = len(inputs) - len(pending)
                    raise PredictionStopped(signum, f"after {count} of {len(inputs)} inputs")
    except BaseException:
        _stop_workers(executor)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return [future.result()[0] for future in futures]
