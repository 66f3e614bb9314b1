"""The run's train.log takes the level the entry point set (``-v``: debug), not a flag passed
down through every function that leads to it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from landseg.runs.folder import RunFolder


@pytest.mark.parametrize(
    ("level", "debug_logged"),
    [(logging.DEBUG, True), (logging.INFO, False), (logging.WARNING, False)],
)
def test_the_run_log_takes_the_entry_point_s_level(
    level: int, debug_logged: bool, tmp_path: Path
) -> None:
    from landseg.training.run import _setup_file_logging

    logger = logging.getLogger("landseg")
    saved = logger.level
    logger.setLevel(level)
    run = RunFolder(tmp_path)
    run.train_log.parent.mkdir(parents=True, exist_ok=True)
    handler = _setup_file_logging(run)
    try:
        logging.getLogger("landseg.train").debug("a debug line")
        logging.getLogger("landseg.train").info("an info line")  # at least info, always
    finally:
        for name in ("landseg", "lightning.pytorch"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
        logger.setLevel(saved)
    text = run.train_log.read_text()
    assert ("a debug line" in text) is debug_logged
    assert "an info line" in text
