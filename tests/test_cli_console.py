"""landseg's console log handler follows sys.stderr when main() runs many times in a process."""

from __future__ import annotations

import io
import logging

import pytest

from landseg import cli


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
