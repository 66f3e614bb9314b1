"""The tests' own layout: a test module imports helpers from tests/helpers.py alone, never
from another test module or a conftest (whose fixtures pytest provides by name)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(path: Path) -> list[str]:
    """The ``tests.*`` modules that ``path`` imports, at any depth (function bodies too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [name for name in names if name == "tests" or name.startswith("tests.")]
    return found


def test_test_modules_import_only_the_helpers_module() -> None:
    wrong = {
        str(path.relative_to(TESTS)): modules
        for path in sorted(TESTS.rglob("*.py"))
        if (modules := [m for m in imported_test_modules(path) if m != "tests.helpers"])
    }
    assert wrong == {}
