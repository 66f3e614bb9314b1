"""DataLoader worker processes and stop signals: the main process decides when a run stops.

SLURM and Kubernetes signal every process of a job, a terminal every process of its group;
DataLoader workers must outlive those signals until the main process has stopped the run at a
resumable point (it needs their batches until then), and still end when torch ends them.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

#: Seconds a DataLoader worker lives on after its first SIGTERM when nobody stops it: longer
#: than any grace period (SLURM's KillWait, Kubernetes' terminationGracePeriodSeconds: 30 s by
#: default), within which the main process stops and ends its workers itself.
WORKER_SIGTERM_GRACE_S = 120.0


def _worker_sigterm(signum: int, frame: object) -> None:
    """A worker's SIGTERM: the first is the cluster's (sent to every process of the job while
    the main process stops the run at a checkpoint, which needs this worker's batches); a
    second one, torch's own ``terminate()`` of a worker that did not stop when asked, or the
    grace running out, ends the worker."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the next SIGTERM kills
    timer = threading.Timer(WORKER_SIGTERM_GRACE_S, os._exit, args=(128 + signum,))
    timer.daemon = True
    timer.start()


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker leaves stop signals to the main process, which decides.

    A terminal sends Ctrl-C to the whole process group, and SLURM and Kubernetes send SIGTERM
    and SIGUSR1 to every process of a job; their default actions would kill the workers, and
    the main process would fail on its next batch instead of stopping the run at a resumable
    point. SIGINT and SIGUSR1 are ignored; the first SIGTERM is survived (see
    :func:`_worker_sigterm`), because SIGTERM is also how torch ends a worker that does not
    stop by itself.
    """
    for name in ("SIGINT", "SIGUSR1"):
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _worker_sigterm)
        # the loader started this worker with SIGTERM blocked (SignalSafeDataLoader), so
        # that one sent before this handler existed waits for it instead of killing
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


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
        if self.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):
            return super().__iter__()
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            iterator = super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
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
