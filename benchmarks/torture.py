"""Crash torture: SIGKILL ``landseg train`` and ``landseg cv`` at random moments, many times.

On small generated data (``landseg demo-data DIR --tiles 24 --size 32``), each command is
started, killed with SIGKILL (its whole process group, like a power cut), started again (for
``train`` with ``continue_training: true`` once its run folder exists), and so on until the
planned kills are spent; then it runs to the end. Kill moments are drawn from a seeded RNG:

* ``startup``: 0.05-3 s after launch (imports, checks, run-folder creation);
* ``random``: anywhere in the training, uniform over an uninterrupted run's duration;
* ``checkpoint``, ``history``, ``run-state``, ``temp-file``: the moment a checkpoint, a
  history file, ``run.json`` (or cv's job log) or any temporary file of an atomic write
  appears or changes (the temporary files of atomic writes count, checkpoints' included,
  so these land *during* writes), plus a delay of 0, up to 5 ms or up to 50 ms.

After every kill, every checkpoint must load with ``torch.load(weights_only=True)`` and every
JSON file, the scalars log and cv's SQLite job log must read. At the end the run must equal an
uninterrupted one (deterministic, CPU): history with every epoch exactly once, equal to the
reference's; the last checkpoint's weights equal; the same checkpoint files; run.json valid
and finished; for cv the same summary.json. Prints the kills survived; exit code 1 on any
problem.

    python -m benchmarks.torture --kills 30 --cv-kills 10 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRIGGERS = ("startup", "random", "checkpoint", "history", "run-state", "temp-file")
#: Files whose appearance or change fires each trigger, relative to the run or job folder.
#: ``**/`` also matches nothing, so one set serves a run folder and a cv job's task folders.
WATCHED = {
    "checkpoint": ["**/checkpoints/*"],
    "history": ["**/history*.json", "**/.history*.tmp"],
    "run-state": ["**/run.json", "**/.run.json.*.tmp", "job.sqlite*"],
    "temp-file": ["**/.*.tmp"],
}
POLL_S = 0.002
#: Torch threads of every run. One: results must not depend on the thread count (float sums
#: do), and on a loaded 2-core machine two OpenMP threads make a tiny step 10-50x slower.
THREADS = 1


@dataclass
class Kill:
    trigger: str
    delay: float
    changes: int = 1  # watched-file changes to wait for before the delay starts
    at: float | None = None  # seconds after launch when the signal was sent


@dataclass
class Target:
    """A command to torture: its CLI arguments (first start and restarts) and its folder."""

    name: str
    start_args: list[str]
    resume_args: list[str]
    folder: Path
    epochs: int

    def args(self) -> list[str]:
        started = self.folder.is_dir() and any(self.folder.iterdir())
        return self.resume_args if started else self.start_args


@dataclass
class Report:
    target: str
    kills: list[Kill] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    finished_early: bool = False
    leftover_temp_files: int = 0

    def line(self) -> str:
        status = "OK" if not self.problems else f"{len(self.problems)} PROBLEMS"
        early = " (the run finished before the last planned kill)" if self.finished_early else ""
        return (
            f"{self.target}: {len(self.kills)} kills survived{early}, {status}; "
            f"{self.leftover_temp_files} temporary files left behind"
        )


# ---------------------------------------------------------------------------- kill plans


def kill_plan(
    count: int,
    seed: int,
    span: float,
    triggers: Sequence[str] | None = None,
    changes: int = 1,
) -> list[Kill]:
    """``count`` kills from a seeded RNG; ``span``: an uninterrupted run's duration (s).

    Triggers are drawn from :data:`TRIGGERS`, or taken in turn from ``triggers``; file
    triggers fire at the ``changes``-th change of their files after each start.
    """
    rng = random.Random(seed)
    plan = []
    for number in range(count):
        trigger = triggers[number % len(triggers)] if triggers else rng.choice(TRIGGERS)
        if trigger == "startup":
            delay = rng.uniform(0.05, 3.0)
        elif trigger == "random":
            delay = rng.uniform(0.0, span)
        else:
            delay = rng.choice([0.0, rng.uniform(0.0, 0.005), rng.uniform(0.0, 0.05)])
        plan.append(Kill(trigger, delay, changes))
    return plan


def snapshot(folder: Path, patterns: Sequence[str], tmpdir: Path | None) -> dict[str, Any]:
    """(mtime, size) of every file the patterns match, and of every file in ``tmpdir``.

    Only plain files count: libraries make temporary *folders* at import (wandb does).
    """
    files = [p for pattern in patterns for p in folder.glob(pattern)]
    if tmpdir is not None:
        files += list(tmpdir.iterdir())
    state = {}
    for path in files:
        try:
            info = path.stat()
        except OSError:  # renamed or removed meanwhile: itself a change, seen next poll
            continue
        if stat.S_ISREG(info.st_mode):
            state[str(path)] = (info.st_mtime_ns, info.st_size)
    return state


def launch_and_kill(
    args: list[str], env: dict[str, str], target: Target, kill: Kill, tmpdir: Path
) -> tuple[int | None, str]:
    """Start ``landseg ARGS``; SIGKILL it as ``kill`` says. (exit code or None if killed, err)."""
    patterns = WATCHED.get(kill.trigger, WATCHED["run-state"])
    watch_tmp = tmpdir if kill.trigger in ("checkpoint", "temp-file") else None
    before = snapshot(target.folder, patterns, watch_tmp)
    launched = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "landseg.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes DataLoader workers too
    )
    fire_at = launched + kill.delay if kill.trigger == "startup" else None
    changes = 0
    while process.poll() is None:
        now = time.monotonic()
        if fire_at is None:
            seen = snapshot(target.folder, patterns, watch_tmp)
            if seen != before:
                before, changes = seen, changes + 1
                if changes >= kill.changes:
                    fire_at = now + kill.delay
        if fire_at is not None and now >= fire_at:
            os.killpg(process.pid, signal.SIGKILL)
            kill.at = round(now - launched, 3)
            process.wait()
            return None, ""
        time.sleep(POLL_S)
    return process.returncode, process.stderr.read().decode() if process.stderr else ""


# ---------------------------------------------------------------------------- checks


def json_problem(path: Path) -> str | None:
    """Why ``path`` is not valid JSON, or None."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return f"{path}: unreadable JSON ({error})"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` does not load with ``weights_only=True``, or None."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None  # removed meanwhile (top-k rotation)
    except Exception as error:
        return f"{path}: does not load with weights_only=True ({type(error).__name__}: {error})"
    return None


def inspect(folder: Path) -> list[str]:
    """Every torn or unreadable file under a run or job folder (temporary files excepted)."""
    from landseg.runs.folder import RunFolder

    problems: list[str] = []
    if not folder.exists():
        return problems
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".ckpt":
            problems.append(checkpoint_problem(path) or "")
        elif path.suffix == ".json":
            problems.append(json_problem(path) or "")
        elif path.name == "job.sqlite":
            problems.append(sqlite_problem(path) or "")
    for history in folder.rglob("history.json"):
        problems.append(progress_problem(history.parent) or "")
    for scalars in folder.rglob(Path(RunFolder.SCALARS_FILE).name):
        lines = scalars.read_bytes().split(b"\n")[:-1]  # a torn last line is allowed
        for number, line in enumerate(lines[:-1], start=1):
            try:
                json.loads(line)
            except ValueError:
                problems.append(f"{scalars}:{number}: torn line in the middle of the file")
    return [p for p in problems if p]


def progress_problem(run: Path) -> str | None:
    """Work a restart would redo: the history is more than one validation ahead of the newest
    checkpoint a resume starts from (``-last`` or ``-step=``). History is written just before
    the checkpoints of its validation, so one validation ahead is allowed."""
    import torch

    try:
        steps = sorted(
            entry["step"] for entry in json.loads((run / "history.json").read_text()).values()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable files are reported by inspect()
    covered = 0
    for path in (run / "checkpoints").glob("*.ckpt"):
        if "-last" in path.stem or "-step=" in path.stem:
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:
                continue
            covered = max(covered, int(checkpoint.get("global_step", 0)))
    if len(steps) < 2 or covered >= steps[-2]:
        return None
    return (
        f"{run}: the history reaches step {steps[-1]} but the newest checkpoint a resume starts "
        f"from (-last or -step=) is at step {covered}: a restart redoes that work"
    )


def sqlite_problem(path: Path) -> str | None:
    """The job log's integrity as the next opener sees it, or None when it is sound.

    Checked on a copy of the database and its write-ahead log: after a kill, opening it
    replays the log (a write), which a read-only connection cannot do ("attempt to write a
    readonly database"), and the original is left for the next start to recover itself.
    """
    with tempfile.TemporaryDirectory(prefix="torture-sqlite-") as tmp:
        copy = Path(tmp) / path.name
        for suffix in ("", "-wal"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                shutil.copyfile(source, copy.with_name(copy.name + suffix))
        try:
            db = sqlite3.connect(copy, timeout=10)
            try:
                result = db.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error as error:
            return f"{path}: {error}"
    return None if result == "ok" else f"{path}: integrity_check says {result}"


def epochs_once(path: Path, epochs: int) -> str | None:
    """Why the history file does not hold epochs 0..epochs-1 exactly once, or None."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate keys {sorted(k for k in keys if keys.count(k) > 1)}")
        return dict(items)

    try:
        keys = list(json.loads(path.read_text(), object_pairs_hook=pairs))
    except (OSError, ValueError) as error:
        return f"{path}: {error}"
    expected = [str(i) for i in range(epochs)]
    return None if keys == expected else f"{path}: epochs {keys}, expected {expected}"


def compare_runs(run: Path, reference: Path, epochs: int) -> list[str]:
    """Differences between a tortured run folder and the uninterrupted one."""
    import torch

    from landseg.callbacks.run_logger import read_scalars

    problems = [epochs_once(run / "history.json", epochs)]
    state = json.loads((run / "run.json").read_text())
    if state.get("status") != "finished":
        problems.append(f"{run / 'run.json'}: status {state.get('status')}, expected finished")
    for name in ("history.json", "history_test.json"):
        if (reference / name).exists() and _read(run / name) != _read(reference / name):
            problems.append(f"{run / name} differs from the uninterrupted run's")
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    ref_names = sorted(p.name for p in (reference / "checkpoints").glob("*.ckpt"))
    if names != ref_names:
        extra, missing = set(names) - set(ref_names), set(ref_names) - set(names)
        problems.append(f"{run}: checkpoints differ: extra {sorted(extra)}, missing {missing}")
    last = next((run / "checkpoints").glob("*-last.ckpt"), None)
    ref_last = next((reference / "checkpoints").glob("*-last.ckpt"))
    if last is None:
        problems.append(f"{run}: no -last checkpoint")
    else:
        weights = torch.load(last, weights_only=True)["state_dict"]
        ref_weights = torch.load(ref_last, weights_only=True)["state_dict"]
        differ = [k for k, v in ref_weights.items() if not torch.equal(weights.get(k), v)]
        if differ:
            problems.append(f"{last}: weights differ from the uninterrupted run's: {differ[:3]}")

    def scalars(folder: Path) -> list[tuple]:
        return [
            tuple(sorted((k, v) for k, v in row.items() if k != "time"))
            for row in read_scalars(folder)
        ]

    if scalars(run) != scalars(reference):
        problems.append(f"{run}: logs/scalars.jsonl differs from the uninterrupted run's")
    for prediction in sorted((reference / "predictions").glob("*.tif")):
        if _pixels(run / "predictions" / prediction.name) != _pixels(prediction):
            problems.append(f"{run / 'predictions' / prediction.name}: differs")
    return [p for p in problems if p]


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _pixels(path: Path) -> bytes | None:
    import rasterio

    if not path.exists():
        return None
    with rasterio.open(path) as src:
        return src.read().tobytes()


def compare_jobs(job: Path, reference: Path, epochs: int) -> list[str]:
    """Differences between a tortured cv job folder and the uninterrupted one."""
    problems = []
    if _read(job / "summary.json") != _read(reference / "summary.json"):
        problems.append(f"{job / 'summary.json'} differs from the uninterrupted job's")
    for task in sorted((reference / "tasks").iterdir()):
        problems += compare_runs(job / "tasks" / task.name, task, epochs)
    return problems


# ---------------------------------------------------------------------------- the torture


def torture(
    target: Target,
    plan: list[Kill],
    env: dict[str, str],
    tmpdir: Path,
    compare: Callable[[], list[str]],
    finish: Callable[[list[str]], int] | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Kill ``target`` as ``plan`` says, let it finish, check it; ``finish`` runs the last
    start in this process (faster) instead of a new interpreter."""
    report = Report(target.name)
    for number, kill in enumerate(plan, start=1):
        code, err = launch_and_kill(target.args(), env, target, kill, tmpdir)
        if code is not None:  # it ended before the kill
            if code != 0:
                report.problems.append(f"start {number} exited {code}: {err.strip()[-2000:]}")
                return report
            report.finished_early = True
            break
        report.kills.append(kill)
        found = inspect(target.folder)
        when = f"{kill.trigger} +{kill.delay:.3f}s, at {kill.at}s"
        log(f"{target.name} kill {number}: {when}: {found or 'every file reads'}")
        report.problems += [f"after kill {number} ({kill.trigger}): {p}" for p in found]
    if not report.finished_early:
        args = target.args()
        if finish is not None:
            code, err = finish(args), ""
        else:
            done = subprocess.run(
                [sys.executable, "-m", "landseg.cli", *args], env=env, capture_output=True
            )
            code, err = done.returncode, done.stderr.decode()
        if code != 0:
            report.problems.append(f"the last start exited {code}: {err.strip()[-2000:]}")
            return report
    report.problems += inspect(target.folder) + compare()
    report.leftover_temp_files = sum(1 for _ in target.folder.rglob(".*.tmp")) + sum(
        1 for path in tmpdir.iterdir() if path.is_file()
    )
    return report


# ---------------------------------------------------------------------------- set-ups


def demo_data(folder: Path, env: dict[str, str]) -> Path:
    """``landseg demo-data FOLDER --tiles 24 --size 32``; returns its config."""
    command = [sys.executable, "-m", "landseg.cli", "demo-data", str(folder)]
    subprocess.run([*command, "--tiles", "24", "--size", "32"], env=env, check=True)
    return folder / "demo.json"


def train_config(
    demo: Path, output: Path, epochs: int, full: bool, step_checkpoints: bool = True
) -> dict[str, Any]:
    """The demo config, deterministic, with step checkpoints (every step) unless told not;
    ``full``: TensorBoard, test split and predictions."""
    config = json.loads(demo.read_text())
    for key in ("train_file", "val_file", "test_file"):
        config["data_source"][key] = str(demo.parent / config["data_source"][key])
    config["data_source"]["data_augmentation"] = {"train": ["rotation90", "radiometry"]}
    config["train_setup"].update(
        epochs=epochs,
        batch_size=4,
        checkpoint_every_n_steps=1 if step_checkpoints else None,
        deterministic=True,
    )
    config["output_setup"].update(
        output_folder=str(output),
        name_exp_log="torture",
        save_top_k=2,
        progress=0,
        use_tensorboard=full,
        get_prediction=full,
    )
    if not full:
        config["data_source"].pop("test_file")
    return config


def cv_config(demo: Path, output: Path, epochs: int) -> dict[str, Any]:
    """Zone 1 held out, zones 2 and 3 take turns as validation set: 2 tasks."""
    config = train_config(demo, output, epochs, full=False)
    config["data_source"].pop("val_file")
    config["data_source"]["train_file"] = str(demo.parent / "zones.csv")
    config["cross_validation"] = {"group_column": "zone", "test_groups": ["1"]}
    return config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def in_process(args: list[str]) -> int:
    """``landseg ARGS`` in this process, on one thread like the children (see ``THREADS``)."""
    import torch

    from landseg.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


def timed(args: list[str]) -> float:
    """Run ``landseg ARGS`` in this process to the end; its duration (the kill span)."""
    start = time.monotonic()
    code = in_process(args)
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed: landseg {' '.join(args)} -> {code}")
    return time.monotonic() - start


def torture_train(
    work: Path,
    kills: int,
    seed: int,
    env: dict[str, str],
    *,
    epochs: int = 4,
    full: bool = True,
    finish_here: bool = False,
    triggers: Sequence[str] | None = None,
    changes: int = 1,
    step_checkpoints: bool = True,
    log: Callable[[str], None] = print,
) -> Report:
    """Torture ``landseg train`` in ``work``: reference run, kills, checks."""
    tmpdir = work / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**env, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": str(THREADS)}
    demo = demo_data(work / "demo", env)
    config = train_config(demo, work / "runs", epochs, full, step_checkpoints)
    reference = {**config, "output_setup": {**config["output_setup"], "version_name": "ref"}}
    span = timed(["train", "-c", str(write(work / "reference.json", reference))])
    config["output_setup"]["version_name"] = "tortured"
    start = write(work / "start.json", config)
    config["train_setup"]["continue_training"] = True
    resume = write(work / "resume.json", config)
    run, ref = work / "runs" / "torture" / "tortured", work / "runs" / "torture" / "ref"
    target = Target("train", ["train", "-c", str(start)], ["train", "-c", str(resume)], run, epochs)
    plan = kill_plan(kills, seed, span, triggers, changes)
    return torture(
        target,
        plan,
        env,
        tmpdir,
        lambda: compare_runs(run, ref, epochs),
        in_process if finish_here else None,
        log,
    )


def torture_cv(
    work: Path, kills: int, seed: int, env: dict[str, str], *, epochs: int = 2
) -> Report:
    """Torture ``landseg cv`` in ``work``: reference job, kills, checks."""
    tmpdir = work / "tmp-cv"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**env, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": str(THREADS)}
    demo = work / "demo" / "demo.json"
    if not demo.exists():
        demo_data(demo.parent, env)
    config = cv_config(demo, work / "cv-runs", epochs)
    reference = {**config, "output_setup": {**config["output_setup"], "name_exp_log": "ref"}}
    span = timed(["cv", "-c", str(write(work / "cv-reference.json", reference))])
    config["output_setup"]["name_exp_log"] = "tortured"
    path = write(work / "cv.json", config)
    job, ref = work / "cv-runs" / "tortured", work / "cv-runs" / "ref"
    target = Target("cv", ["cv", "-c", str(path)], ["cv", "-c", str(path)], job, epochs)
    plan = kill_plan(kills, seed, span)
    return torture(target, plan, env, tmpdir, lambda: compare_jobs(job, ref, epochs))


def main() -> None:
    from benchmarks.common import bytecode_env, load_average

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30, help="kills of landseg train (0: none)")
    parser.add_argument("--cv-kills", type=int, default=10, help="kills of landseg cv (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--step-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train with checkpoint_every_n_steps: 1 (default) or resume from -last alone",
    )
    args = parser.parse_args()
    print(f"load before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="landseg-torture-") as tmp:
        work = args.work or Path(tmp)
        env = bytecode_env(Path(tmp) / "pycache")
        reports = []
        if args.kills:
            reports.append(
                torture_train(
                    work,
                    args.kills,
                    args.seed,
                    env,
                    epochs=args.epochs,
                    step_checkpoints=args.step_checkpoints,
                )
            )
        if args.cv_kills:
            reports.append(torture_cv(work, args.cv_kills, args.seed + 1, env))
    for report in reports:
        print(report.line())
        for problem in report.problems:
            print(f"  {problem}")
    # a kill is survived when the next start continued the run (a start that fails ends the
    # torture with a problem); problems in the end state are listed above
    print(f"kills survived: {sum(len(r.kills) for r in reports)}")
    print(f"load after: {load_average()}")
    sys.exit(1 if any(r.problems for r in reports) else 0)


if __name__ == "__main__":
    main()
