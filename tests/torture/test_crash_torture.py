"""Crash torture, short: ``landseg train`` SIGKILLed three times, then finished, equals an
uninterrupted run. ``python -m benchmarks.torture`` is the long version (many random kills,
``landseg cv`` too); both share the code in ``benchmarks/torture.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchmarks.torture import Report, torture_train

pytestmark = pytest.mark.slow

#: One kill while the interpreter starts, one the moment a checkpoint is being written (its
#: temporary file appears), one just after a history write; the delays come from the seed.
TRIGGERS = ("startup", "checkpoint", "history")
CHECKPOINT_SET = "checkpoints differ"


def children_env() -> dict[str, str]:
    """The children's environment: this one. Not a ``PYTHONPYCACHEPREFIX`` cache: the
    installed packages ship their bytecode (``make`` installs with ``--compile-bytecode``), and
    a prefix makes a child look for it there alone, so the first child compiled torch,
    Lightning and timm again (about 15 s of CPU here) to save the 0.2 s landseg's own take."""
    return dict(os.environ)


@pytest.fixture(scope="module")
def tortured(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The torture, run once for the tests below (about a minute)."""
    return torture_train(
        tmp_path_factory.mktemp("torture"),
        kills=3,
        seed=6,
        env=children_env(),
        epochs=3,
        full=False,
        finish_here=True,
        triggers=TRIGGERS,
        log=lambda line: None,
    )


def test_three_sigkills_then_continue_equals_uninterrupted(tortured: Report) -> None:
    """Every file reads after every kill; history (each epoch once), scalars and the last
    weights equal the uninterrupted run's; run.json says finished."""
    assert [kill.trigger for kill in tortured.kills] == list(TRIGGERS)
    assert all(kill.at is not None for kill in tortured.kills)
    problems = [p for p in tortured.problems if CHECKPOINT_SET not in p]
    assert not problems, "\n".join(problems)


def test_three_sigkills_leave_the_same_checkpoint_files(tortured: Report) -> None:
    problems = [p for p in tortured.problems if CHECKPOINT_SET in p]
    assert not problems, "\n".join(problems)


def test_sigkill_after_two_epochs_without_step_checkpoints_loses_no_epoch(tmp_path: Path) -> None:
    """Killed just after the second validation's history write: the restart must resume from
    a checkpoint that covers at least the first epoch (checked after the kill)."""
    report = torture_train(
        tmp_path,
        kills=1,
        seed=0,
        env=children_env(),
        epochs=3,
        full=False,
        finish_here=True,
        triggers=("history",),
        changes=2,
        step_checkpoints=False,
        log=lambda line: None,
    )
    assert len(report.kills) == 1
    assert not report.problems, "\n".join(report.problems)
