"""Errors a user can fix. The CLI turns them into one line and exit code 2."""

from __future__ import annotations


class LandsegError(Exception):
    """A problem with the user's input (config, CSV, raster, output folder).

    ``problems`` holds one line per problem so validation can report everything at once.
    """

    exit_code = 2

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(LandsegError):
    """The config file is unreadable or does not validate."""


class DataError(LandsegError):
    """A CSV or raster named by the config is missing, unreadable or inconsistent."""


class RunFolderError(LandsegError):
    """The run folder cannot be created or would overwrite an existing run."""
