"""landseg's console: the log handler follows sys.stderr when main() runs many times in a
process, and user errors print one line each (a traceback only with ``-v``)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from landseg import cli
from landseg.errors import ConfigError
from tests.conftest import write_config


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

    with pytest.raises(ConfigError) as error:  # with -v: the error is re-raised, not printed
        cli.main(["validate", "-v", "-c", str(config)])
    assert error.value.problems == [LR_PROBLEM]
    assert capsys.readouterr().err == ""

    # ... so that the interpreter prints its traceback: run as a user runs it, in a process
    command = [sys.executable, "-m", "landseg.cli", "validate", "-v", "-c", str(config)]
    verbose = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert verbose.returncode == 1  # Python's status for an uncaught exception
    assert "Traceback (most recent call last):" in verbose.stderr
    assert 'landseg/cli.py", line' in verbose.stderr.replace("\\", "/")  # with its frames
    assert verbose.stderr.splitlines()[-1] == f"landseg.errors.ConfigError: {LR_PROBLEM}"
    assert not [line for line in verbose.stderr.splitlines() if line.startswith("error:")]
