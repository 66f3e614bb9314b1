"""The layer rule of docs/design.md: no import cycle in ``src/landseg``, no upward import.

Every ``import`` statement counts, module level or inside a function (lazy imports included),
as written in the source: the rule is about the code's structure, not about what happens to be
imported at run time.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import landseg
from tests.helpers import landseg_source_modules

SRC = Path(landseg.__file__).parent

#: The folders of ``src/landseg``, bottom to top: the folders are the layers. A module may
#: import modules of its own folder (without a cycle) and of any folder in a lower layer; never
#: one of a higher layer, nor one of another folder of its own layer. ``landseg`` itself (its
#: ``__init__``, the version) counts as the bottom layer.
FOLDER_LAYERS: list[tuple[str, ...]] = [
    ("core",),  # errors, registries, processes, atomic files, stop signals
    ("launch",),  # cluster detection, multi-node handshake, devices and CPU threads
    ("config",),  # the config models, loading, overrides, continuation rules
    ("data", "models", "runs"),  # rasters to tensors; networks; the run folder and catalog
    ("tasks",),  # the LightningModule, losses, metrics, optimisers
    ("loggers",),  # loggers of the model's state (TensorBoard, W&B, CSV, figures)
    ("callbacks",),  # Lightning callbacks, each owning its files and state
    ("maps",),  # COG, styles, vectors: map products from a prediction
    ("inference",),  # predicting scenes and tiles with a checkpoint or a portable model
    ("planning",),  # reading and checking a config into a plan, writing nothing
    ("training",),  # executing a training plan: the run lifecycle and the trainer
    ("reports",),  # the report of a finished run
    ("jobs",),  # cross-validation jobs: plan, job log, runners, summary
    ("tuning",),  # searches whose trials are cv jobs
    ("cli",),  # the parser and every command
]
LAYERS: dict[str, int] = {
    folder: rank for rank, folders in enumerate(FOLDER_LAYERS) for folder in folders
}


def modules() -> dict[str, Path]:
    return landseg_source_modules()


def folder(module: str) -> str:
    """The folder of ``src/landseg`` a module is in: ``landseg.jobs.plan`` -> ``jobs``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""  # landseg and landseg.<folder> (its __init__)


def layer(module: str) -> int | None:
    """The module's layer, or None for a module in no listed folder (a test failure)."""
    parts = module.split(".")
    if parts == ["landseg"]:
        return 0
    return LAYERS.get(parts[1])


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


def unplaced(graph: dict[str, set[str]]) -> list[str]:
    """Modules outside every folder of :data:`FOLDER_LAYERS` (a module at the package's top
    level, or a folder nobody placed)."""
    return sorted(m for m in graph if layer(m) is None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, or of another folder in the same layer."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            source_layer, target_layer = layer(module), layer(target)
            if source_layer is None or target_layer is None:
                continue
            sideways = target_layer == source_layer and folder(target) != folder(module)
            if target_layer > source_layer or (sideways and folder(module) and folder(target)):
                found.append(f"{module} ({folder(module)}) imports {target} ({folder(target)})")
    return found


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between folders: an edge when any module of one imports the other."""
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = folders.setdefault(folder(module) or "landseg", set())
        edges.update(folder(t) or "landseg" for t in targets if folder(t) != folder(module))
    return folders


def stdlib_shadows(names: set[str]) -> list[str]:
    """Modules named like a standard-library module (``landseg/io.py`` reads as ``io``)."""
    return sorted(n for n in names if n.rpartition(".")[2] in sys.stdlib_module_names)


def test_every_module_is_in_a_layer_folder() -> None:
    graph = import_graph()
    assert unplaced(graph) == []
    assert {"landseg.planning.prepare", "landseg.training.run", "landseg.runs.folder"} <= set(graph)


def test_no_module_imports_from_a_layer_above_it() -> None:
    assert upward_imports(import_graph()) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_folders() -> None:
    assert cycles(folder_graph(import_graph())) == []


def test_no_module_is_named_like_a_standard_library_module() -> None:
    assert stdlib_shadows(set(modules())) == []


def test_the_walk_sees_lazy_imports() -> None:
    # the command line imports the heavy modules only inside its handlers
    assert "landseg.training.run" in import_graph()["landseg.cli.main"]


# Control tests: each check fails on a planted violation.


def test_control_a_module_outside_the_layer_folders_is_found() -> None:
    planted = {
        "landseg.helpers": set(),
        "landseg.nowhere.thing": set(),
        "landseg.core.errors": set(),
    }
    assert unplaced(planted) == ["landseg.helpers", "landseg.nowhere.thing"]


def test_control_an_upward_and_a_sideways_import_are_found() -> None:
    planted = {
        "landseg.core.errors": {"landseg.cli.main"},
        "landseg.data.raster": {"landseg.models.registry"},
        "landseg.cli.main": {"landseg.core.errors"},
    }
    assert upward_imports(planted) == [
        "landseg.core.errors (core) imports landseg.cli.main (cli)",
        "landseg.data.raster (data) imports landseg.models.registry (models)",
    ]


def test_control_a_folder_cycle_without_a_module_cycle_is_found() -> None:
    planted = {
        "landseg.jobs.plan": {"landseg.training.run"},
        "landseg.training.run": {"landseg.inference.split"},
        "landseg.inference.split": set(),
        "landseg.inference.commands": {"landseg.jobs.plan"},
    }
    assert cycles(planted) == []
    assert cycles(folder_graph(planted)) == [["inference", "jobs", "training"]]


def test_control_a_module_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_control_a_standard_library_name_is_found() -> None:
    assert stdlib_shadows({"landseg.io", "landseg.core.files", "landseg.jobs.logging"}) == [
        "landseg.io",
        "landseg.jobs.logging",
    ]
