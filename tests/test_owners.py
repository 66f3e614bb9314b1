"""One owner for each file landseg writes and reads back (docs/design.md, Architecture: Owners).

The names of the run folder's, the checkpoints' and the job folder's files are written, as
string literals, in their owner module only, and checkpoints are loaded and saved there only:
any other module asks the owner. Docstrings and comments do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import landseg

SRC = Path(landseg.__file__).parent

OWNERS: dict[str, tuple[str, ...]] = {
    "runs/folder.py": ("run.json", "config.json"),
    "runs/checkpoints.py": ("checkpoints", ".ckpt", "-last", "-best"),
    "jobs/folder.py": (
        "job.json",
        "rows.csv",
        "job.sqlite",
        "status.json",
        "spatial_blocks.png",
        "summary.json",
        "summary.md",
        "summary.png",
        "summary_classes.png",
        "study.db",
        "trials.csv",
        "importance.png",
        "best_config.yaml",
    ),
}
#: Literals that are not the owned file names: the config's ``model_out_ext`` choices, and
#: the suffix of the job folder ``best_config.yaml`` names (a folder name, not a checkpoint).
#: A Hugging Face repository's ``config.json`` (pretrained weights' statistics) is not a run's,
#: nor is torch hub's ``checkpoints`` folder of downloaded weights.
ALLOWED = {
    ("models/pretrained.py", "checkpoints"),
    ("config/schema.py", ".ckpt"),
    ("tuning/results.py", "-best"),
    ("models/pretrained_stats.py", "config.json"),
}
#: Who may call ``torch.load`` / ``torch.save``: the checkpoints' owner; models/export.py
#: writes the extra formats of a network and sits in runs/'s layer, which it may not import.
TORCH_IO = {"load": {"runs/checkpoints.py"}, "save": {"runs/checkpoints.py", "models/export.py"}}


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            found.add(id(first.value))
    return found


def literals_and_torch_calls() -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    literals, calls = [], []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
            ):
                literals.append((module, node.value, node.lineno))
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
                and node.func.attr in TORCH_IO
            ):
                calls.append((module, node.func.attr, node.lineno))
    return literals, calls


def test_owned_file_names_are_written_by_their_owner_only() -> None:
    owner_of = {name: owner for owner, names in OWNERS.items() for name in names}
    literals, _ = literals_and_torch_calls()
    strays = [
        f"{module}:{line}: {value!r} (owned by {owner_of[value]})"
        for module, value, line in literals
        if value in owner_of and module != owner_of[value] and (module, value) not in ALLOWED
    ]
    assert strays == []
    for owner, names in OWNERS.items():  # the owners do name them (the check has teeth)
        assert set(names) <= {value for module, value, _ in literals if module == owner}, owner


def test_checkpoints_are_loaded_and_saved_by_their_owner_only() -> None:
    _, calls = literals_and_torch_calls()
    strays = [f"{m}:{line}: torch.{call}" for m, call, line in calls if m not in TORCH_IO[call]]
    assert strays == []
    assert ("runs/checkpoints.py", "load") in {(m, call) for m, call, _ in calls}
