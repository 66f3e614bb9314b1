"""landseg's console: the log handler follows sys.stderr when main() runs many times in a
process, user errors print one line each (a traceback only with ``-v``), and a closed stdout
(``landseg schema | head``) ends the command quietly."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from landseg.cli import main as cli
from tests.helpers import write_config


def test_console_messages_go_to_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("landseg")
    for _ in range(2):  # main() called twice: one handler, not two
        cli._console_logging(verbose=False)
    assert sum(isinstance(h, cli._StderrHandler) for h in logger.handlers) == 1
    for message in ("first", "second"):
        stream = io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)  # a new stderr for each call
        logger.warning(message)
        assert stream.getvalue() == f"WARNING landseg: {message}\n"


LR_PROBLEM = "train_setup.lr: Input should be greater than 0, got -1"


def test_verbose_shows_the_traceback(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["train_setup"]["lr"] = -1
    config = write_config(tmp_path / "c.json", demo_config)

    assert cli.main(["validate", "-c", str(config)]) == 2  # without -v: one line per problem
    quiet = capsys.readouterr()
    assert quiet.err.splitlines() == [f"error: {LR_PROBLEM}"]
    assert "Traceback" not in quiet.err and quiet.out == ""

    # with -v: the traceback instead of the line, and the same status (scripts check it)
    assert cli.main(["validate", "-v", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert err.splitlines()[-1] == f"landseg.core.errors.ConfigError: {LR_PROBLEM}"

    # run as a user runs it, in a process
    command = [sys.executable, "-m", "landseg.cli.main", "validate", "-v", "-c", str(config)]
    verbose = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert verbose.returncode == 2
    assert "Traceback (most recent call last):" in verbose.stderr
    assert 'landseg/cli/main.py", line' in verbose.stderr.replace("\\", "/")  # with its frames
    assert verbose.stderr.splitlines()[-1] == f"landseg.core.errors.ConfigError: {LR_PROBLEM}"
    assert not [line for line in verbose.stderr.splitlines() if line.startswith("error:")]


def run_with_stdout_closed(command: list[str]) -> subprocess.CompletedProcess:
    """``landseg COMMAND | head -0``: stdout is a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "landseg.cli.main", *command],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write)


def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    from landseg.jobs.log import LOG_FILE, JobLog

    JobLog(tmp_path / "job" / LOG_FILE).close()
    for command in (["schema"], ["cv", "status", str(tmp_path / "job")]):
        done = run_with_stdout_closed(command)
        assert done.stderr == "", command  # no BrokenPipeError traceback
        assert done.returncode == cli.STDOUT_CLOSED == 141, command  # as for `yes | head`


def test_closed_stdout_with_head(tmp_path: Path) -> None:
    """The real pipeline: 5 MB of output into ``head -1``."""
    script = "from landseg.cli import main as cli"
    script += "; cli.cmd_schema = lambda args: print('x' * 5_000_000) or 0"
    script += "; import sys; sys.exit(cli.main(['schema']))"
    done = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{sys.executable}" -c "{script}" | head -c 1'],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (done.stdout, done.stderr, done.returncode) == ("x", "", 141)


def test_a_broken_pipe_that_is_not_stdout_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: object) -> int:
        raise BrokenPipeError("a worker's pipe")

    monkeypatch.setattr(cli, "cmd_schema", broken)
    with (tmp_path / "out.txt").open("w") as stdout:  # stdout itself is fine
        monkeypatch.setattr("sys.stdout", stdout)
        with pytest.raises(BrokenPipeError, match="a worker's pipe"):
            cli.main(["schema"])
