"""The layer rule of docs/design.md: no import cycle in ``src/landseg``, no upward import.

Every ``import`` statement counts, module level or inside a function (lazy imports included),
as written in the source: the rule is about the code's structure, not about what happens to be
imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import landseg

SRC = Path(landseg.__file__).parent

#: Bottom to top. A module may import its own layer's modules (without a cycle) and the layers
#: below; never a layer above. The longest matching prefix decides a module's layer.
LAYERS: dict[str, int] = {
    "landseg": 0,  # the package, errors, io, registry, processes, cluster, stop_signals, hardware
    "landseg.config": 1,
    "landseg.data": 2,
    "landseg.models": 2,
    "landseg.runs": 2,
    "landseg.tasks": 3,
    "landseg.loggers": 4,
    "landseg.prepare": 5,
    "landseg.callbacks": 6,
    "landseg.inference": 7,
    "landseg.training": 8,
    "landseg.jobs": 9,
    "landseg.tuning": 9,  # a search runs cv jobs: above landseg.jobs, in its layer
    "landseg.cli": 10,
    "landseg.jobs.commands": 10,
    "landseg.inference.commands": 10,
    "landseg.tuning.commands": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def layer(module: str) -> int:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(matches, key=len)]


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The landseg modules ``path`` imports anywhere in its code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from landseg.x import y``: y may be a submodule
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:  # ``import landseg.a.b`` names module landseg.a.b
                name = name.rpartition(".")[0]
            if name.startswith("landseg") and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, name, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer() -> None:
    assert all(layer(name) >= 0 for name in modules())
    assert {"landseg.prepare", "landseg.training.run", "landseg.runs.folder"} <= set(modules())


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_checker_sees_lazy_imports_and_cycles() -> None:
    """The walk finds imports inside functions, and the cycle finder finds a cycle."""
    graph = import_graph()
    # cli imports its subcommands' heavy modules only inside handlers
    assert "landseg.training.run" in graph["landseg.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("module", "expected"),
    [("landseg.errors", 0), ("landseg.jobs.commands", 10), ("landseg.jobs.plan", 9)],
)
def test_layers_by_longest_prefix(module: str, expected: int) -> None:
    assert layer(module) == expected
