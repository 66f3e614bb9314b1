"""The benchmark scripts (run by hand, never timed here) still import and parse their options."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPTS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_imports_and_shows_its_help(
    name: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    main = getattr(module, "main", None)
    if main is None:  # a module the scripts share (common, host)
        assert Path(str(module.__file__)).parent.name == "benchmarks"
        return
    monkeypatch.setattr(sys, "argv", [f"benchmarks.{name}", "--help"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out
