"""``landseg`` run with time stamps around its phases, from the outside: no edit of landseg.

    LANDSEG_PROBE_OUT=stamps.json python -m benchmarks.startup_probe train -c CONFIG

runs ``landseg.cli.main.main(argv)`` in this process after wrapping the functions and methods
of :data:`TARGETS` so that each call records its start and end (``time.time()``). A target is
wrapped when its module is first imported (an import hook), not before: importing a module
early to wrap it would move its import cost out of the phase that pays it. A target whose
module is never imported, or whose name is gone (landseg changed), is listed as not seen.

The stamps are written as JSON to ``$LANDSEG_PROBE_OUT`` at exit: ``started`` (this module's
first line, after the interpreter's start), ``imported_cli`` (``landseg.cli.main`` imported),
``main_returned``, ``at_exit`` (the last exit handler: after the loader workers' shutdown) and
``records`` (label, class, start, end of each call). :mod:`benchmarks.bench_startup` reads them.
"""

from __future__ import annotations

import time

STARTED = time.time()

import atexit  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib.abc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

#: (module, "function" or "Class.method", label, mode). mode: "span" records every call,
#: "first" the first call and the count, "cm" a context-manager method's blocks.
TARGETS: list[tuple[str, str, str, str]] = [
    ("landseg.planning.run_plan", "prepare_train", "config checks (prepare_train)", "span"),
    ("landseg.training.run", "train", "train()", "span"),
    ("landseg.training.run", "plan_run", "run plan (plan_run)", "span"),
    ("landseg.tasks.segmentation", "SegmentationTask.__init__", "building the task", "span"),
    ("landseg.training.run", "_write_run_files", "run.json and config copy", "span"),
    ("landseg.training.run", "build_trainer", "building the trainer", "span"),
    ("lightning.pytorch.trainer.trainer", "Trainer.fit", "fit", "span"),
    ("landseg.callbacks.weights", "ModelGraph.on_fit_start", "model graph (TensorBoard)", "span"),
    ("landseg.tasks.segmentation", "SegmentationTask.training_step", "training step", "first"),
    (
        "landseg.tasks.segmentation",
        "SegmentationTask.on_validation_epoch_end",
        "validation done",
        "span",
    ),
    ("landseg.callbacks.run_logger", "RunLogger.on_validation_end", "validation logged", "span"),
    ("landseg.callbacks.cadence", "VisualCadence.timed", "drawing (any epoch)", "cm"),
    ("landseg.callbacks.cadence", "DrawsOnCadence.on_fit_end", "on_fit_end drawings", "span"),
    ("landseg.callbacks.run_logger", "RunLogger.on_fit_end", "on_fit_end (run logger)", "span"),
    ("lightning.pytorch.trainer.trainer", "Trainer.save_checkpoint", "checkpoint save", "span"),
    ("landseg.training.run", "_after_fit", "after fit (test, predict, export)", "span"),
]

RECORDS: list[dict[str, Any]] = []
SEEN: set[str] = set()
STAMPS: dict[str, float] = {"started": STARTED}


def _record(label: str, owner: str, start: float, end: float | None = None) -> None:
    RECORDS.append({"label": label, "class": owner, "start": start, "end": end or time.time()})


def _owner(args: Sequence[Any], method: bool) -> str:
    """The class of the instance a method was called on (a subclass's name, not the base's)."""
    return type(args[0]).__name__ if method and args else ""


def _wrap(function: Callable[..., Any], label: str, mode: str, method: bool) -> Callable[..., Any]:
    if mode == "cm":

        @contextlib.contextmanager
        def block(*args: Any, **kwargs: Any) -> Iterator[Any]:
            start = time.time()
            with function(*args, **kwargs) as value:
                yield value
            _record(label, _owner(args, method), start)

        return functools.wraps(function)(block)
    calls = [0]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if mode == "first" and calls[0] > 1:
            return function(*args, **kwargs)
        start = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            _record(label, _owner(args, method), start)

    return wrapper


def _patch(module: Any) -> None:
    for name, target, label, mode in TARGETS:
        if name != module.__name__:
            continue
        owner, _, attribute = target.rpartition(".")
        holder = getattr(module, owner, None) if owner else module
        if holder is None:
            continue
        # a method as its class defines it (not one inherited: the base's own entry wraps it)
        space = vars(holder) if isinstance(holder, type) else vars(module)
        original = space.get(attribute)
        if original is None:
            continue
        setattr(holder, attribute, _wrap(original, label, mode, bool(owner)))
        SEEN.add(f"{name}:{target}")


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Wraps a target module's functions right after the module is executed."""

    modules: ClassVar[set[str]] = {name for name, *_ in TARGETS}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        execute = getattr(loader, "exec_module", None)
        if execute is None:
            return spec

        def exec_module(module: Any) -> None:
            execute(module)
            _patch(module)

        loader.exec_module = exec_module  # type: ignore[union-attr]
        return spec


def _write() -> None:
    STAMPS["at_exit"] = time.time()
    path = os.environ.get("LANDSEG_PROBE_OUT")
    if not path:
        return
    missing = [f"{m}:{t}" for m, t, *_ in TARGETS if f"{m}:{t}" not in SEEN]
    with open(path, "w") as out:
        json.dump({**STAMPS, "records": RECORDS, "not_seen": missing}, out)


def run_probed(argv: list[str]) -> int:
    """Run landseg's command line on ``argv`` with its phases stamped (no ``main``: this is not a
    benchmark with options of its own; every argument is landseg's)."""
    atexit.register(_write)  # first registered, so it runs last: after the workers' shutdown
    sys.meta_path.insert(0, _PatchOnImport())
    import landseg.cli.main as cli

    STAMPS["imported_cli"] = time.time()
    try:
        return cli.main(argv)
    finally:
        STAMPS["main_returned"] = time.time()


if __name__ == "__main__":
    sys.exit(run_probed(sys.argv[1:]))
