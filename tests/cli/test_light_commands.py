"""Commands that do no training import nothing they do not need (each import costs seconds).

``landseg validate`` needs torch (optimiser and scheduler signatures) but neither Lightning,
segmentation-models-pytorch, timm, torchvision nor matplotlib for landseg's own models, and it
checks optimisers without making torch import its compiler (``torch._dynamo``). ``--help``,
``runs`` and ``cv status`` need no torch at all. Timings are in benchmarks/bench_validate.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_config

HEAVY = (
    "lightning",
    "segmentation_models_pytorch",
    "timm",
    "torchvision",
    "torch._dynamo",
    "matplotlib",
    "tensorboard",
    "torchmetrics",
)


def imported_after(args: list[str], cwd: Path) -> tuple[int, list[str]]:
    """Run ``landseg ARGS`` in a fresh interpreter; (exit code, heavy modules it imported)."""
    code = (
        "import json, sys\n"
        "from landseg.cli.main import main\n"
        "try:\n"
        f"    rc = main({args!r})\n"
        "except SystemExit as stop:\n"
        "    rc = stop.code\n"
        f"heavy = [m for m in {[*HEAVY, 'torch']!r} if m in sys.modules]\n"
        "print(json.dumps([rc, heavy]), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    rc, heavy = json.loads(result.stderr.strip().splitlines()[-1])
    return rc, heavy


def test_validate_imports_torch_but_nothing_heavier(demo_config: dict, tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.json", demo_config)
    rc, heavy = imported_after(["validate", "-c", str(path)], tmp_path)
    assert rc == 0
    assert heavy == ["torch"]


@pytest.mark.parametrize(
    "args", [["--help"], ["runs", "{tmp}"], ["cv", "status", "{tmp}/job"]], ids=str
)
def test_listing_commands_import_no_torch(args: list[str], tmp_path: Path) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] == "cv":  # an empty job log to read
        from landseg.jobs.log import LOG_FILE, JobLog

        (tmp_path / "job").mkdir()
        JobLog(tmp_path / "job" / LOG_FILE).close()
    rc, heavy = imported_after(args, tmp_path)
    assert rc == 0
    assert heavy == []
