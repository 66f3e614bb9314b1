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
        if threading.current_thread() is not threading.main_thread():
            return
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
