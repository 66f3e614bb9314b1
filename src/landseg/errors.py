"""Errors a user can fix. The CLI turns them into one line and exit code 2."""

from __future__ import annotations


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
    ``landseg.errors.DataError: <problems>``; the user needs those problems, not the worker's
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
