"""The stop signals of a run or a job: a handler that only records the signal.

Layer 0 (the standard library alone), so that a process that must set things up before torch
is imported (a cv worker limiting its threads) can handle stop signals from its start.
:class:`landseg.callbacks.graceful_stop.GracefulStop` acts on what is recorded.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

#: Whether the command is still starting (imports, config and data checks) with no run or job
#: handler in place yet: see :func:`handle_early_stops`.
_early_window = False


class EarlyStop(Exception):
    """A stop signal received while a command was starting, before anything was written."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} while starting")


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
