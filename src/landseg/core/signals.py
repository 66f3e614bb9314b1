"""Every stop signal of landseg: the one module that handles, names and sends signals.

What each kind of process does with SIGINT, SIGTERM and SIGUSR1 is decided here, as
Lightning's own ``trainer/connectors/signal_connector.py`` decides it for Lightning; the rest
of landseg asks this module (and imports no :mod:`signal` of its own):

* a command while it starts (:class:`EarlyStops`), a run, a cv job or a search
  (:class:`StopSignals`: the handler only records the signal;
  :class:`landseg.callbacks.graceful_stop.GracefulStop` acts on it at a resumable point),
  a command with no resumable point (:class:`TerminateAsInterrupt`);
* the processes a run or a job starts: DataLoader workers (:func:`leave_stops_to_parent`,
  :func:`sigterm_blocked`), ``predict --workers`` processes (:func:`ignore_interrupts`,
  :func:`exit_on_sigterm`), ``cv --workers`` processes (:func:`pass_on`);
* Lightning's Trainer, which is kept off the signals (:func:`keep_lightning_off_signals`);
* the names, numbers and exit codes of signals (:func:`signal_name`, :func:`signal_numbers`,
  :func:`exit_code`, :data:`REQUEUE_SIGNAL`).

Layer 0 (the standard library alone), so that a process that must set things up before torch
is imported (a cv worker limiting its threads) can handle stop signals from its start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from types import FrameType
from typing import Any

#: The signals a command that starts a run or a job honours before its config is read:
#: SIGINT and the default ``device_setup.stop_signals``.
EARLY_STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
#: The signal SLURM sends before a job's time limit (``sbatch --signal=USR1@90``): a run
#: stopped by it asks SLURM to requeue its job.
REQUEUE_SIGNAL: int = signal.SIGUSR1


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    return signal.Signals(signum).name


def signal_numbers(names: Iterable[str]) -> list[int]:
    """The numbers of the signals named (``["SIGTERM"]`` -> ``[15]``)."""
    return [int(getattr(signal, name)) for name in names]


def exit_code(signum: int) -> int:
    """The exit status of a command stopped by ``signum``: 128 + the signal, as a process
    killed by it would have (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1)."""
    return 128 + signum


#: Whether the command is still starting (imports, config and data checks) with no run or job
#: handler in place yet: see :func:`handle_early_stops`.
_early_window = False


class EarlyStop(Exception):
    """A stop signal received while a command was starting, before anything was written."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)} while starting")


def _early_handler(signum: int, frame: FrameType | None) -> None:
    if _early_window:
        raise EarlyStop(signum)
    # a run or job has taken over its own stop signals; this one is not among them: do what
    # the signal would have done had landseg never handled it
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


class EarlyStops:
    """Stop at once, cleanly, on ``signals`` received while a command starts.

    A context manager around a whole command. Until a :class:`StopSignals` is installed (a
    run's, a job's), such a signal raises :class:`EarlyStop` wherever the main thread is
    (importing torch, checking the data): the command exits 128 + the signal with one line,
    instead of dying by the signal's default action (for SLURM's SIGUSR1, without requeueing
    its job). Once a :class:`StopSignals` takes over, a signal it does not handle gets its
    default action, as it would have without landseg. The previous handlers are put back on
    exit (a command run in-process, by a test or a library user, leaves none behind).
    """

    def __init__(self, signals: Sequence[int]):
        self.signals = tuple(signals)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> EarlyStops:
        global _early_window
        if threading.current_thread() is threading.main_thread():
            _early_window = True
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, _early_handler)
        return self

    def __exit__(self, *exc: object) -> None:
        global _early_window
        _early_window = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Terminated(KeyboardInterrupt):
    """SIGTERM in a command with no resumable point to stop at (predict, evaluate, export).

    A KeyboardInterrupt, so that everything Ctrl-C already cleans up (temporary files of
    unfinished writes, worker processes) is cleaned up for ``kill`` and a scheduler's stop too,
    instead of the signal's default action ending the process on the spot.
    """

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class TerminateAsInterrupt:
    """A context manager: SIGTERM raises :class:`Terminated` in the main thread meanwhile."""

    def __init__(self) -> None:
        self._previous: Any = None

    def __enter__(self) -> TerminateAsInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class StopSignals:
    """The stop signals of one run: the handlers only record the signal (``requested``).

    A context manager: the handlers are installed on entry (in the main thread, where Python
    delivers signals) and the previous ones restored on exit. Install it around the whole run
    so that a signal during start-up is not lost; :class:`GracefulStop` acts on it. A second
    SIGINT raises KeyboardInterrupt at once, for a person who does not want to wait.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def interrupted(self) -> bool:
        """Whether the signal recorded is Ctrl-C (SIGINT), which a terminal sends to every
        process of its group: passing it on would make a second one."""
        return self.requested == signal.SIGINT

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.requested = signum

    def install(self) -> None:
        """Handle the signals here, in the main thread (where Python delivers them); the
        handlers in place before are kept for :meth:`restore`."""
        global _early_window
        if threading.current_thread() is not threading.main_thread():
            return
        _early_window = False  # this run or job handles its stop signals from now on
        for signum in self.signals:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        """Put the previous handlers back. When they belong to an enclosing
        :class:`StopSignals` (a cv job's loop around a task's run), a signal recorded here is
        passed on to it, so that the job stops too instead of taking the next task."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
            outer = getattr(handler, "__self__", None)
            if isinstance(outer, StopSignals) and outer.requested is None:
                outer.requested = self.requested
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def pass_on(signum: int, pids: Iterable[int | None]) -> None:
    """Send ``signum`` to the processes ``pids`` (a job's local workers), skipping those that
    are gone. A terminal and SLURM signal the whole group, the workers included; a signal sent
    to the job's process alone reaches them this way."""
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


# ---------------------------------------------------------------------------- worker processes

#: Seconds a DataLoader worker lives on after its first SIGTERM when nobody stops it: longer
#: than any grace period (SLURM's KillWait, Kubernetes' terminationGracePeriodSeconds: 30 s by
#: default), within which the main process stops and ends its workers itself.
WORKER_SIGTERM_GRACE_S = 120.0


def _worker_sigterm(signum: int, frame: object) -> None:
    """A DataLoader worker's SIGTERM: the first is the cluster's (sent to every process of the
    job while the main process stops the run at a checkpoint, which needs this worker's
    batches); a second one, torch's own ``terminate()`` of a worker that did not stop when
    asked, or the grace running out, ends the worker."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the next SIGTERM kills
    timer = threading.Timer(WORKER_SIGTERM_GRACE_S, os._exit, args=(exit_code(signum),))
    timer.daemon = True
    timer.start()


def leave_stops_to_parent() -> None:
    """In a DataLoader worker: leave stop signals to the main process, which decides.

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
        # the loader started this worker with SIGTERM blocked (sigterm_blocked), so that one
        # sent before this handler existed waits for it instead of killing
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextlib.contextmanager
def sigterm_blocked() -> Iterator[None]:
    """SIGTERM blocked in this thread meanwhile (processes forked meanwhile start with it
    blocked, until :func:`leave_stops_to_parent` unblocks it); a SIGTERM received meanwhile is
    delivered on exit. Without ``pthread_sigmask`` (Windows), nothing is blocked."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignore_interrupts() -> None:
    """In a worker process: Ctrl-C, which a terminal sends to the whole group, and SLURM's
    SIGUSR1, which it sends to every process of a job, are left to the main process, which
    decides (and no worker prints a traceback of its own, or dies by SIGUSR1's default)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


@contextlib.contextmanager
def requeue_signal_ignored() -> Iterator[None]:
    """SIGUSR1 ignored meanwhile (in the main thread): a helper process started meanwhile
    (multiprocessing's resource tracker, which ignores SIGINT and SIGTERM itself) inherits it,
    so SLURM's SIGUSR1 to every process of a job leaves it alive while the main process
    stops; the previous handler is put back on exit."""
    signum = getattr(signal, "SIGUSR1", None)
    if signum is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(exit_code(signum))


def exit_on_sigterm() -> None:
    """In a worker process: SIGTERM ends the work at hand through Python (SystemExit), so
    that its cleanup runs (an unfinished temporary file is removed)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


# ---------------------------------------------------------------------------- Lightning


def keep_lightning_off_signals(trainer: Any) -> None:
    """Keep Lightning's Trainer from installing signal handlers: landseg alone decides.

    Lightning puts its own SIGTERM handler in front of every other when each stage starts
    (``trainer/connectors/signal_connector.py``), and its loops then end the run with
    SystemExit (exit status 0) wherever they next look, even mid-validation. There is no
    public switch for it (``SLURMEnvironment(auto_requeue=False)`` spares SIGUSR1 only), so
    its signal connector, a private attribute, is given nothing to do: pyproject.toml pins
    Lightning's minor version, and tests/test_lightning_private.py fails, naming the
    attribute, when a Lightning release changes it.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is None or not callable(getattr(connector, "register_signal_handlers", None)):
        raise RuntimeError(
            "Lightning's Trainer has no _signal_connector.register_signal_handlers: landseg "
            "cannot keep Lightning off the stop signals with this Lightning version; install "
            "the version pyproject.toml pins"
        )
    connector.register_signal_handlers = lambda: None
