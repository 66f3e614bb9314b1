"""What a command imports before it starts: ``landseg --help`` nothing outside the standard
library, ``landseg train`` none of the optional extras it does not train with.

Each import costs start-up time in every process (``wandb`` about 1 s, ``optuna``, ``onnx``,
``shapely`` and ``pyogrio`` a few tenths each, ``mpi4py`` initialises MPI), so the modules
that need them import them inside the function that uses them. Read from the source, as
tests/test_architecture.py reads it: the ``import`` statements that run when a module is
imported (module level, class bodies, ``if``/``try`` blocks; not function bodies, not
``if TYPE_CHECKING:``), followed through landseg's own modules. Measured in a fresh
interpreter instead, this would cost seconds of Lightning and torch imports per check.
"""

from __future__ import annotations

import ast
import sys

from tests.helpers import landseg_source_modules

#: Extras that ``landseg train`` does not use: the W&B and MLflow loggers (when not chosen),
#: portable exports (``landseg export``), searches (``landseg tune``), MPI jobs, vector maps.
OPTIONAL = (
    "wandb",
    "mlflow",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "optuna",
    "mpi4py",
    "shapely",
    "pyogrio",
    "scipy",
    "pandas",
    "sklearn",
)

#: Where ``landseg train`` goes before its first step: the command, the modules its handler
#: imports, and those that build the trainer, the callbacks, the data and the model.
TRAIN_START = (
    "landseg.cli.main",
    "landseg.callbacks.progress",
    "landseg.planning.run_plan",
    "landseg.training.run",
    "landseg.callbacks.images",
    "landseg.callbacks.weights",
    "landseg.maps.style",
    "landseg.models.factory",
)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_names(source: str, package: str) -> set[str]:
    """The modules that importing ``source`` imports (absolute names, submodules included)."""
    found: set[str] = set()
    pending: list[ast.AST] = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue  # runs when called, not when imported
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules
        pending.extend(ast.iter_child_nodes(node))
    return found


def imported_when_importing(entries: tuple[str, ...]) -> set[str]:
    """Every module, landseg's and others', that importing ``entries`` imports."""
    sources = landseg_source_modules()
    seen: set[str] = set()
    pending = list(entries)
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a package's __init__ runs before its modules
            module = ".".join(parts[:i])
            if module in seen or (module.startswith("landseg") and module not in sources):
                continue
            seen.add(module)
            if module in sources:
                path = sources[module]
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                pending.extend(import_time_names(path.read_text(), package))
    return seen


def outside(names: set[str]) -> set[str]:
    """The top-level packages of ``names`` that are neither landseg nor the standard library."""
    tops = {name.split(".")[0] for name in names if name}
    return {top for top in tops if top != "landseg" and top not in sys.stdlib_module_names}


def test_help_imports_the_standard_library_only_and_train_no_optional_extra() -> None:
    assert outside(imported_when_importing(("landseg.cli.main",))) == set()
    train = outside(imported_when_importing(TRAIN_START))
    assert {"torch", "lightning", "segmentation_models_pytorch"} <= train  # the walk works
    assert sorted(train & set(OPTIONAL)) == []
