"""core/signals.py owns every stop signal: no other module handles, names or sends one."""

from __future__ import annotations

import ast
from pathlib import Path

import landseg

SRC = Path(landseg.__file__).parent
OWNER = SRC / "core" / "signals.py"


def signal_uses(path: Path) -> list[str]:
    """``line: what`` for each import of :mod:`signal` and each signal sent with ``os.kill``
    or ``os.killpg`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name == "signal" for a in node.names):
            found.append(f"{node.lineno}: import signal")
        elif isinstance(node, ast.ImportFrom) and node.module == "signal" and not node.level:
            found.append(f"{node.lineno}: from signal import ...")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("kill", "killpg")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "os"
            # os.kill(pid, 0) asks whether a process lives; it sends nothing
            and not (
                len(node.args) == 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == 0
            )
        ):
            found.append(f"{node.lineno}: os.{node.func.attr}")
    return found


def test_only_core_signals_handles_signals() -> None:
    """A module that needs a signal handled, named or sent asks core/signals.py, as
    Lightning's modules ask its signal connector: one place decides what each process does
    with SIGINT, SIGTERM and SIGUSR1."""
    elsewhere = {
        str(path.relative_to(SRC)): uses
        for path in sorted(SRC.rglob("*.py"))
        if path != OWNER and (uses := signal_uses(path))
    }
    assert elsewhere == {}, elsewhere
    assert signal_uses(OWNER)  # the check itself finds what it looks for


def test_the_check_finds_each_kind_of_use(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import os\nimport signal\nfrom signal import SIGTERM\n\n\ndef f():\n    os.kill(1, 15)\n"
        "    os.kill(1, 0)\n"
    )
    assert signal_uses(planted) == ["2: import signal", "3: from signal import ...", "7: os.kill"]
