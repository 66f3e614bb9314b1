"""DataLoader worker processes and stop signals: the main process decides when a run stops.

SLURM and Kubernetes signal every process of a job, a terminal every process of its group;
DataLoader workers must outlive those signals until the main process has stopped the run at a
resumable point (it needs their batches until then), and still end when torch ends them.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from landseg.core.signals import leave_stops_to_parent, sigterm_blocked


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: it leaves stop signals to the main process,
    which decides (:func:`landseg.core.signals.leave_stops_to_parent`)."""
    leave_stops_to_parent()


def _shutdown_at_exit(loader: weakref.ref[SignalSafeDataLoader]) -> None:
    alive = loader()
    if alive is not None:
        alive.shutdown_workers()


class SignalSafeDataLoader(DataLoader):
    """A DataLoader whose workers start with SIGTERM blocked.

    torch installs its own SIGTERM handler in a new worker before it calls
    ``worker_init_fn``; a SIGTERM to the process group in that window (each fit starts the
    train and val workers, each test or prediction pass its own) would end the worker and
    fail the run. With SIGTERM blocked while the workers
    are forked, such a signal stays pending until :func:`ignore_stop_signals` has put the
    worker's own handler in place and unblocks it. The main process unblocks at once: a
    SIGTERM it received meanwhile is then delivered to its handler as usual.
    """

    def _start_workers(self) -> Iterator[Any]:
        if self.num_workers == 0:
            return super().__iter__()
        with sigterm_blocked():
            iterator = super().__iter__()
        self._started.append(weakref.ref(iterator))
        if self.persistent_workers and not self.__dict__.get("_shutdown_at_exit"):
            # persistent workers outlive the epoch: end them before multiprocessing's own
            # exit handler terminates them (atexit runs the latest registered first), which
            # torch would report as workers that "exited unexpectedly"
            atexit.register(_shutdown_at_exit, weakref.ref(self))
            self.__dict__["_shutdown_at_exit"] = True
        return iterator

    @property
    def _started(self) -> list[weakref.ref[Any]]:
        started = self.__dict__.get("_started_iterators")
        if started is None:
            started = self.__dict__["_started_iterators"] = []
        return started

    def shutdown_workers(self) -> None:
        """End the worker processes of every iterator this loader started, now.

        A run that stops (a signal, an error) leaves its iterators to the garbage collector,
        and the exception's traceback keeps them alive; at exit, multiprocessing would then
        end the workers with SIGTERM, which they survive once (:func:`_worker_sigterm`), and
        wait for them. Asked here, they stop at once, the way torch ends them after an epoch.
        """
        for ref in self._started:
            iterator = ref()
            if isinstance(iterator, _MultiProcessingDataLoaderIter):
                iterator._shutdown_workers()
        self._started.clear()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._start_workers()
