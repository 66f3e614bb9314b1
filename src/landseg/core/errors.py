"""Errors a user can fix. The CLI turns them into one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

from landseg.core.signals import exit_code, signal_name


class LandsegError(Exception):
    """A problem with the user's input (config, CSV, raster, output folder).

    ``problems`` holds one line per problem so validation can report everything at once.
    """

    exit_code = 2

    def __init__(self, problems: str | list[str]):
        if isinstance(problems, str):
            problems = _problems_from_worker(type(self), problems) or [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _problems_from_worker(kind: type[LandsegError], message: str) -> list[str] | None:
    """The original problem lines when ``message`` is a DataLoader worker's re-raise.

    torch re-raises an error from a worker process as ``kind(message)``, where ``message`` is
    "Caught DataError in DataLoader worker process 0. Original Traceback ..." ending with
    ``landseg.core.errors.DataError: <problems>``; the user needs those problems, not the worker's
    traceback.
    """
    if not message.startswith("Caught ") or "\nOriginal Traceback" not in message:
        return None
    marker = f"{kind.__module__}.{kind.__qualname__}: "
    start = message.rfind(marker)
    if start < 0:
        return None
    lines = message[start + len(marker) :].strip().splitlines()
    return lines or None


class ConfigError(LandsegError):
    """The config file is unreadable or does not validate."""


class DataError(LandsegError):
    """A CSV or raster named by the config is missing, unreadable or inconsistent."""


class RunFolderError(LandsegError):
    """The run folder cannot be created or would overwrite an existing run."""


class StopRequested(Exception):
    """A stop signal (Ctrl-C, SIGTERM) ended a run at a resumable point.

    Raised by :class:`landseg.callbacks.graceful_stop.GracefulStop`; ``checkpoint`` is the step
    checkpoint it wrote, if any, and ``run`` the run folder (set by the run lifecycle). Not a
    KeyboardInterrupt, which Lightning turns into ``sys.exit(1)``; the command line exits
    with :attr:`exit_code`, 128 + the signal, as a process killed by it would.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None = None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.run: Path | None = None
        #: Whether the command asks SLURM to requeue its job before exiting (set by the owner
        #: of the config: ``device_setup.slurm_requeue``, under SLURM, on SIGUSR1).
        self.requeue = False
        super().__init__(f"stopped by {signal_name(signum)} at step {step}")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)
