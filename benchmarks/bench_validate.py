"""CPU time of ``landseg validate`` on the demo config against ``python -c "import torch"``.

Target (the issue): ``landseg validate`` of the demo config costs at most 1.5x the CPU time of
``python -c "import torch"`` in the same environment. The demo dataset is written once with
``landseg demo-data``; then every command runs as its own process, the commands alternating
within each of ``--repeats`` rounds (after ``--warmup`` unmeasured rounds: page cache, and
with ``--bytecode private`` the bytecode cache). CPU is user + sys of the child and of the
processes it waited for (``resource.getrusage(RUSAGE_CHILDREN)`` before and after), wall is
launch to exit. Also timed, unless ``--no-extras``: ``landseg --help``, ``landseg runs`` on the
demo's (empty) output folder and ``landseg cv status`` on an empty job log.

Bytecode: ``--bytecode env`` (default) runs the children in this environment as it is, so with
``PYTHONDONTWRITEBYTECODE=1`` and no ``.pyc`` files installed each child compiles torch and
the rest from source; the report says whether torch's and landseg's bytecode is present.
``--bytecode private`` gives the children a private, warmed bytecode cache
(``PYTHONPYCACHEPREFIX``): what an install with compiled bytecode costs, without writing into
the virtual environment. ``--bytecode none`` makes them compile everything, whatever ``.pyc``
files are installed (an empty ``PYTHONPYCACHEPREFIX`` with ``PYTHONDONTWRITEBYTECODE=1``; this
also recompiles the standard library, which a venv without ``.pyc`` files does not).

``--importtime`` also runs validate once under ``python -X importtime`` and lists the 25
top-level packages with the largest cumulative import time, with their own (self) time and
the stack of their first import (recorded by an import finder put in front: every landseg
frame, and of other packages the line that imported the next one); then which modules validate
imports beyond those of ``import torch`` (also under ``-X importtime``), by package.

This script imports neither torch nor ``benchmarks.common`` (which imports torch and
Lightning): the parent stays light and its own start-up does not load the machine.

    python -m benchmarks.bench_validate --repeats 5
    python -m benchmarks.bench_validate --repeats 3 --importtime
    python -m benchmarks.bench_validate --bytecode private --no-extras
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.host import host, load_average

TARGET = 1.5  # validate / import torch, CPU time (the issue)
BASELINE = "import_torch"
SUBJECT = "validate"
#: Packages worth naming when validate imports them (it needs none of them to check a config).
HEAVY = (
    "torch",
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "lightning_utilities",
    "torchmetrics",
    "torchvision",
    "timm",
    "segmentation_models_pytorch",
    "huggingface_hub",
    "safetensors",
    "matplotlib",
    "tensorboard",
    "tensorboardX",
    "wandb",
    "scipy",
    "sklearn",
    "pandas",
    "mpi4py",
    "rasterio",
    "PIL",
    "rich",
    "pydantic",
    "yaml",
    "numpy",
    "sympy",
    "onnx",
)


# ---------------------------------------------------------------------------- the machine


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def has_bytecode(module: str, env: dict[str, str]) -> bool | None:
    """Whether ``module``'s ``__init__`` has a ``.pyc`` where a child of ``env`` looks for it."""
    spec = importlib.util.find_spec(module)  # a top-level name: finds, does not import
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    source = Path(spec.origin)
    tag = sys.implementation.cache_tag
    prefix = env.get("PYTHONPYCACHEPREFIX")
    if prefix:
        return (Path(prefix) / source.parent.relative_to("/") / f"{source.stem}.{tag}.pyc").exists()
    return (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").exists()


def machine() -> dict[str, Any]:
    """The host, and the versions of the environment measured."""
    return {
        **host(),
        "executable": sys.executable,
        "torch": version("torch"),
        "lightning": version("lightning"),
        "landseg": version("landseg"),
    }


# ---------------------------------------------------------------------------- the runs


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run_timed(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Run ``command`` to its end; its CPU (user, sys) and wall seconds. Fails on exit != 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(
            f"{shlex.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    return {"cpu_s": user + system, "user_s": user, "sys_s": system, "wall_s": wall}


def landseg_command(entry: str) -> list[str]:
    """How to start ``landseg`` with this interpreter: its console script, or ``-m``."""
    script = Path(sys.executable).parent / "landseg"
    if entry == "script" and script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "landseg.cli.main"]


def prepare(folder: Path, landseg: list[str], env: dict[str, str], extras: bool) -> dict:
    """The demo dataset, and the commands to time (name -> argv)."""
    demo = folder / "demo"
    subprocess.run([*landseg, "demo-data", str(demo)], env=env, cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    config = demo / "demo.json"
    commands: dict[str, list[str]] = {
        BASELINE: [sys.executable, "-c", "import torch"],
        SUBJECT: [*landseg, "validate", "-c", str(config)],
    }
    if not extras:
        return commands
    runs = demo / json.loads(config.read_text())["output_setup"]["output_folder"]
    runs.mkdir(parents=True, exist_ok=True)
    commands["help"] = [*landseg, "--help"]
    commands["runs"] = [*landseg, "runs", str(runs)]
    job = folder / "cv-job"
    make_log = (  # an empty job log, as a started job has; in a child, to keep this one light
        "import sys; from pathlib import Path; from landseg.jobs.log import JobLog, LOG_FILE;"
        " JobLog(Path(sys.argv[1]) / LOG_FILE).close()"
    )
    made = subprocess.run([sys.executable, "-c", make_log, str(job)], env=env, cwd=folder,
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode == 0:
        commands["cv_status"] = [*landseg, "cv", "status", str(job)]
    else:
        print(f"cv status skipped, no job log: {made.stderr.strip()[-300:]}", file=sys.stderr)
    return commands


def measure(
    commands: dict[str, list[str]], env: dict[str, str], cwd: Path, repeats: int, warmup: int
) -> dict[str, list[dict[str, float]]]:
    """Every command once per round, alternating; ``warmup`` rounds first, not kept."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for round_ in range(-warmup, repeats):
        for name, command in commands.items():
            timing = run_timed(command, env, cwd)
            label = "warm-up" if round_ < 0 else f"round {round_ + 1}/{repeats}"
            print(
                f"{label:>12} {name:>13}: cpu {timing['cpu_s']:6.2f} s "
                f"(user {timing['user_s']:.2f}, sys {timing['sys_s']:.2f}), "
                f"wall {timing['wall_s']:6.2f} s",
                file=sys.stderr,
                flush=True,
            )
            if round_ >= 0:
                runs[name].append(timing)
    return runs


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, timings in runs.items():
        out[name] = {
            f"median_{key}": round(median([t[key] for t in timings]), 3)
            for key in ("cpu_s", "user_s", "sys_s", "wall_s")
        }
        out[name]["cpu_s_runs"] = [round(t["cpu_s"], 2) for t in timings]
        out[name]["wall_s_runs"] = [round(t["wall_s"], 2) for t in timings]
    return out


def ratios(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Each command against ``import torch``: ratio of medians, and median of per-round ratios."""
    base = runs[BASELINE]
    out: dict[str, Any] = {}
    for name, timings in runs.items():
        if name == BASELINE:
            continue
        out[name] = {}
        for key in ("cpu_s", "wall_s"):
            of_medians = median([t[key] for t in timings]) / median([b[key] for b in base])
            paired = median([t[key] / b[key] for t, b in zip(timings, base, strict=True)])
            out[name][key.removesuffix("_s")] = {
                "ratio_of_medians": round(of_medians, 3),
                "median_of_round_ratios": round(paired, 3),
            }
    return out


# ---------------------------------------------------------------------------- -X importtime

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def parse_importtime(stderr: str) -> list[tuple[str, int, int, list[str]]]:
    """``-X importtime`` lines as (module, self us, cumulative us, ancestors nearest first).

    Python prints a module when its import ends (children before their parent), indented two
    spaces per level, so a line's parent is the next line below it with a smaller indent.
    """
    lines = []
    for text in stderr.splitlines():
        match = _LINE.match(text)
        if match:
            own, cumulative, indent, module = match.groups()
            lines.append((module, int(own), int(cumulative), (len(indent) - 1) // 2))
    parsed: list[tuple[str, int, int, list[str]]] = []
    stack: list[tuple[int, str]] = []  # ancestors of the current line, outermost first
    for module, own, cumulative, depth in reversed(lines):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parsed.append((module, own, cumulative, [name for _, name in reversed(stack)]))
        stack.append((depth, module))
    parsed.reverse()
    return parsed


def top(module: str) -> str:
    return module.split(".", 1)[0]


def chain(package: str, ancestors: list[str]) -> str:
    """Who imported ``package``: every landseg module, and for each other package only its
    module that imported the next one in (the rest of a run of one package is left out)."""
    kept: list[str] = []
    for module in ancestors:
        name = top(module)
        if name == package:
            continue
        if name != "landseg" and kept and top(kept[-1]) == name:
            continue  # keep the innermost module of a run: the one that did the import
        kept.append(module)
    return " <- ".join([package, *kept]) if kept else f"{package} (top level)"


#: Runs a ``python SCRIPT ...`` or ``python -m MODULE ...`` command with an import finder in
#: front that records, for each top-level package, the Python stack of its first import (the
#: finder finds nothing itself). argv: output JSON file, then the command less ``python``.
_SPY = r"""
import json, os, runpy, sys, traceback
out, argv = sys.argv[1], sys.argv[2:]
roots = sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}, key=len)[::-1]
script = os.path.realpath(argv[0]) if argv[0] != "-m" else None
first = {}
def where(path):
    real = os.path.realpath(path)
    for root in roots:
        if real.startswith(root + os.sep):
            return os.path.relpath(real, root)
    return path
class Spy:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in first and top not in sys.modules:
            first[top] = [
                (where(f.filename), f.lineno, f.name) for f in traceback.extract_stack()[:-1]
                if not f.filename.startswith("<") and os.path.realpath(f.filename) != script
            ]
sys.meta_path.insert(0, Spy())
try:
    if script is None:
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
finally:
    with open(out, "w") as f:
        json.dump(first, f)
"""

#: Frames left out of the import stacks: the machinery between an import and its importer.
_PLUMBING = {"runpy", "importlib", "pkgutil"}


def stack_chain(package: str, frames: list[list[Any]]) -> str:
    """``package <- importer <- ... <- landseg's entry``, innermost first: every landseg frame,
    and of each run of frames of another package its innermost frame (the line that imported
    the next package) and its outermost (where it was entered), ``...`` for those between."""
    runs: list[tuple[str, list[str]]] = []  # (owner, frames innermost first)
    for path, line, function in reversed(frames):
        owner = Path(path).parts[0] if not Path(path).is_absolute() else path
        owner = owner.removesuffix(".py")
        if owner in _PLUMBING or owner == package:
            continue
        frame = f"{path}:{line} ({function})"
        if runs and runs[-1][0] == owner and owner != "landseg":
            runs[-1][1].append(frame)
        else:
            runs.append((owner, [frame]))
    kept: list[str] = []
    for _, run in runs:
        kept.extend(run if len(run) <= 2 else [run[0], "...", run[-1]])
    return " <- ".join([package, *kept])


def importtime_report(command: list[str], env: dict[str, str], cwd: Path, count: int) -> dict:
    """Run ``command`` (``python ...``) once under ``-X importtime`` and the import spy."""
    stacks_file = cwd / "first-imports.json"
    traced = [command[0], "-X", "importtime", "-c", _SPY, str(stacks_file), *command[1:]]
    done = subprocess.run(traced, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"validate under -X importtime exited with {done.returncode}:\n"
                         f"{done.stderr[-3000:]}")  # fmt: skip
    stacks = json.loads(stacks_file.read_text())
    parsed = parse_importtime(done.stderr)
    packages: dict[str, dict[str, Any]] = {}
    for module, own, cumulative, ancestors in parsed:
        package = top(module)
        entry = packages.setdefault(
            package, {"cumulative_us": 0, "self_us": 0, "modules": 0, "chain": None}
        )
        entry["self_us"] += own
        entry["modules"] += 1
        if not ancestors or top(ancestors[0]) != package:  # entered from another package
            entry["cumulative_us"] += cumulative
            if entry["chain"] is None:  # the first entry, in import order
                entry["chain"] = chain(package, ancestors)
    for package, entry in packages.items():
        if package in stacks:
            entry["chain"] = stack_chain(package, stacks[package])
    ranked = sorted(packages.items(), key=lambda item: -item[1]["cumulative_us"])
    total = sum(own for _, own, _, _ in parsed)
    rows = [
        f"{info['cumulative_us'] / 1e3:8.0f} ms cum {info['self_us'] / 1e3:7.0f} ms self "
        f"{info['modules']:5d} mod  {info['chain']}"
        for _, info in ranked[:count]
    ]
    baseline = subprocess.run([command[0], "-X", "importtime", "-c", "import torch"], env=env,
                              cwd=cwd, capture_output=True, text=True, check=True)  # fmt: skip
    beyond = beyond_baseline(parsed, {m for m, *_ in parse_importtime(baseline.stderr)}, count)
    heavy = {
        name: {
            "cumulative_ms": round(packages[name]["cumulative_us"] / 1e3),
            "self_ms": round(packages[name]["self_us"] / 1e3),
            "first_imported_by": packages[name]["chain"],
        }
        for name in HEAVY
        if name in packages
    }
    return {
        "command": shlex.join([*command[:1], "-X", "importtime", *command[1:]]),
        "how_to_read": "cum: time inside imports entered from outside the package (what it "
        "imports included); self: its own modules' time; chain: the stack of its first import, "
        "innermost first (every landseg frame; of other packages, the importing line)",
        "modules_imported": len(parsed),
        "import_self_total_ms": round(total / 1e3),
        f"top_{count}_packages_by_cumulative": rows,
        "heavy_imported": heavy,
        "heavy_not_imported": [name for name in HEAVY if name not in packages],
        "beyond_import_torch": beyond,
    }


def beyond_baseline(
    parsed: list[tuple[str, int, int, list[str]]], baseline: set[str], count: int
) -> dict[str, Any]:
    """The modules imported beyond ``import torch``'s: their self time, by package (torch's
    own extra modules by their second-level name, e.g. ``torch._dynamo``)."""
    groups: dict[str, list[int]] = {}
    for module, own, _, _ in parsed:
        if module in baseline:
            continue
        parts = module.split(".")
        key = ".".join(parts[:2]) if parts[0] == "torch" and len(parts) > 1 else parts[0]
        groups.setdefault(key, [0, 0])
        groups[key][0] += own
        groups[key][1] += 1
    ranked = sorted(groups.items(), key=lambda item: -item[1][0])
    return {
        "modules": sum(n for _, n in groups.values()),
        "self_ms": round(sum(us for us, _ in groups.values()) / 1e3),
        f"top_{count}_groups_by_self": [
            f"{us / 1e3:7.0f} ms self {n:5d} mod  {key}" for key, (us, n) in ranked[:count]
        ],
    }


# ---------------------------------------------------------------------------- main


def child_env(mode: str, folder: Path) -> dict[str, str]:
    """The children's environment: this one, or with a private or an empty bytecode cache."""
    env = dict(os.environ)
    if mode == "private":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    elif mode == "none":  # bytecode is then read from the (empty) prefix only, and not written
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = str(folder / "no-pycache")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    parser.add_argument(
        "--bytecode",
        choices=("env", "private", "none"),
        default="env",
        help="env: this environment as it is (default); private: a warmed bytecode cache of "
        "the children's own (PYTHONPYCACHEPREFIX), nothing written into the venv; none: no "
        "bytecode read or written (an empty PYTHONPYCACHEPREFIX), the standard library's too",
    )
    parser.add_argument(
        "--entry",
        choices=("script", "module"),
        default="script",
        help="start landseg by the venv's console script (default) or python -m landseg.cli.main",
    )
    parser.add_argument(
        "--extras",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time landseg --help, landseg runs and landseg cv status (default: yes)",
    )
    parser.add_argument("--target", type=float, default=TARGET, help="CPU ratio to meet (1.5)")
    parser.add_argument(
        "--importtime",
        action="store_true",
        help="also run validate once under -X importtime and rank the imported packages",
    )
    parser.add_argument("--top", type=int, default=25, help="packages listed by --importtime")
    args = parser.parse_args()
    load_before = load_average()
    landseg = landseg_command(args.entry)
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        folder = Path(tmp)
        env = child_env(args.bytecode, folder)
        bytecode = {
            "mode": args.bytecode,
            "PYTHONDONTWRITEBYTECODE": env.get("PYTHONDONTWRITEBYTECODE"),
            "PYTHONPYCACHEPREFIX": env.get("PYTHONPYCACHEPREFIX"),
            "torch_pyc_at_start": has_bytecode("torch", env),
            "landseg_pyc_at_start": has_bytecode("landseg", env),
        }
        commands = prepare(folder, landseg, env, args.extras)
        runs = measure(commands, env, folder, args.repeats, args.warmup)
        traced = (
            importtime_report(commands[SUBJECT], env, folder, args.top) if args.importtime else None
        )
    cpu_ratio = median([t["cpu_s"] for t in runs[SUBJECT]]) / median(
        [t["cpu_s"] for t in runs[BASELINE]]
    )
    met = cpu_ratio <= args.target
    result: dict[str, Any] = {
        "benchmark": "validate",
        "command": shlex.join([sys.executable, "-m", "benchmarks.bench_validate", *sys.argv[1:]]),
        "machine": {**machine(), "load_before": load_before},
        "setup": {
            "repeats": args.repeats,
            "warmup_rounds": args.warmup,
            "bytecode": bytecode,
            "commands": {name: shlex.join(argv) for name, argv in commands.items()},
        },
        "medians": summarise(runs),
        "vs_import_torch": ratios(runs),
        "verdict": (
            f"{'PASS' if met else 'FAIL'}: validate / import torch, median CPU, "
            f"{cpu_ratio:.2f} {'<=' if met else '>'} {args.target}"
        ),
    }
    if traced is not None:
        result["importtime_validate"] = traced
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
