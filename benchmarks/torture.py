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

``--signal TERM`` (or ``USR1``, ``INT``) sends that signal instead, to the whole process group
(as SLURM and Kubernetes do: DataLoader workers get it too), at the same seeded moments, with
one more trigger, ``validation`` (below), and then waits for the command to stop by itself.
Each stop must exit with exactly 128 + the signal (143, 138, 130) within ``STOP_TIMEOUT_S``
(else it is SIGKILLed and the round fails), leave run.json ``interrupted`` (train; for cv no
task left ``running`` in the job log) and pass the same file checks as after a kill; a signal
that lands after the command has done its work (exit 0) counts as "ended before the signal".
A signal sent while the process has no handler for it (``SigCgt`` in ``/proc/PID/status``:
the interpreter is still importing, or cv is between two tasks) kills it by the default
action: counted apart, and a problem when landseg had already handled that signal earlier
in the same start. ``--loader-workers N`` trains with N DataLoader workers.

Every run is float32 (``device_setup.precision: 32-true``) unless ``--precision bf16-mixed``:
the comparison is bit for bit, and ``precision: auto`` would pick bf16 on a host that computes
it natively and float32 elsewhere, so the torture would test whatever the host has.

* ``validation``: no file changes when a validation starts; this trigger waits for the last
  step checkpoint before one (``-step=`` of the step before a validation step of the
  uninterrupted run's history), then waits a seeded fraction of two step intervals, which
  lands in the last training step of the epoch or in the validation loop (both stop after
  the validation and its checkpoints). Needs step checkpoints; one planned signal in each
  run of seven (picked by a second seeded RNG, so the others keep the moments of
  ``--signal KILL``) becomes one. The validation's end (history, run.json, figures, top-k
  checkpoints) is what the ``history``, ``run-state`` and ``checkpoint`` triggers hit.

    python -m benchmarks.torture --kills 30 --cv-kills 10 --seed 1
    python -m benchmarks.torture --signal TERM --kills 8 --cv-kills 3 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
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
from typing import IO, Any

TRIGGERS = ("startup", "random", "checkpoint", "history", "run-state", "temp-file")
#: Files whose appearance or change fires each trigger, relative to the run or job folder.
#: ``**/`` also matches nothing, so one set serves a run folder and a cv job's task folders.
WATCHED = {
    "checkpoint": ["**/checkpoints/*"],
    "history": ["**/history*.json", "**/.history*.tmp"],
    "run-state": ["**/run.json", "**/.run.json.*.tmp", "job.sqlite*"],
    "temp-file": ["**/.*.tmp"],
    # the step checkpoints (not their dot-named temporary files) of ``validation``
    "validation": ["**/checkpoints/*-step=*.ckpt"],
}
POLL_S = 0.002
#: Torch threads of every run. One: results must not depend on the thread count (float sums
#: do), and on a loaded 2-core machine two OpenMP threads make a tiny step 10-50x slower.
THREADS = 1
#: The signals ``--signal`` sends; KILL kills, the others ask for a graceful stop.
SIGNALS = {
    "KILL": signal.SIGKILL,
    "TERM": signal.SIGTERM,
    "USR1": signal.SIGUSR1,
    "INT": signal.SIGINT,
}
#: Seconds a graceful stop may take, from the signal to the process's exit.
STOP_TIMEOUT_S = 30.0
#: One planned signal in each run of this many becomes a ``validation`` trigger (not for KILL).
VALIDATION_EVERY = 7


@dataclass
class Kill:
    """One planned signal, and after it is sent what came of it."""

    trigger: str
    delay: float  # seconds; for ``validation``, a fraction of two step intervals until sent
    changes: int = 1  # watched-file changes to wait for before the delay starts
    at: float | None = None  # seconds after launch when the signal was sent
    # graceful signals only:
    code: int | None = None  # the exit status (Popen's: -N when the signal N killed it)
    exit_s: float | None = None  # seconds from the signal to the exit
    caught: bool | None = None  # whether the process had a handler for it (SigCgt)
    caught_before: bool = False  # whether it had one at some moment before, in this start
    strays: int = 0  # processes of its group still alive after it exited (then SIGKILLed)
    #: graceful (128 + the signal), default (its default action: no handler), ended (exit 0,
    #: the run complete), other (anything else, a problem)
    outcome: str = ""
    late_claims: list[str] = field(default_factory=list)  # cv tasks taken after the signal
    stopped: str = ""  # landseg's "stopped by SIGTERM at step N", if it said so
    step: int | None = None  # that step


@dataclass
class Target:
    """A command to torture: its CLI arguments (first start and restarts) and its folder."""

    name: str
    start_args: list[str]
    resume_args: list[str]
    folder: Path
    epochs: int
    #: The global steps at which the uninterrupted run validated (its history's steps).
    val_steps: frozenset[int] = frozenset()

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
    signal: str = "KILL"
    val_steps: frozenset[int] = frozenset()

    def line(self) -> str:
        status = "OK" if not self.problems else f"{len(self.problems)} PROBLEMS"
        if self.signal != "KILL":
            return f"{self.target}: {self.signal_summary()}, {status}"
        early = " (the run finished before the last planned kill)" if self.finished_early else ""
        return (
            f"{self.target}: {len(self.kills)} kills survived{early}, {status}; "
            f"{self.leftover_temp_files} temporary files left behind"
        )

    def graceful(self) -> list[Kill]:
        """The signals the command stopped on with exactly 128 + the signal."""
        expected = 128 + SIGNALS[self.signal]
        return [kill for kill in self.kills if kill.code == expected]

    def signal_summary(self) -> str:
        """Signals sent, how the command ended after each, the slowest stop."""
        signum = SIGNALS[self.signal]
        graceful = self.graceful()
        where = {"after a validation": 0, "at a step checkpoint": 0, "between tasks": 0}
        where["before training (no 'stopped by' line)"] = 0
        for kill in graceful:
            if kill.step is None:
                where["before training (no 'stopped by' line)"] += 1
            elif kill.step == 0:  # cv's loop stops between tasks at "step 0"
                where["between tasks"] += 1
            elif kill.step in self.val_steps:
                where["after a validation"] += 1
            else:
                where["at a step checkpoint"] += 1
        places = ", ".join(f"{count} {place}" for place, count in where.items() if count)
        default = [kill for kill in self.kills if kill.outcome == "default"]
        ended = [kill for kill in self.kills if kill.outcome == "ended"]
        other = [kill for kill in self.kills if kill.outcome == "other"]
        times = [kill.exit_s for kill in self.kills if kill.exit_s is not None]
        slowest = f"{max(times):.2f} s" if times else "-"
        parts = [
            f"{len(self.kills)} SIG{self.signal} sent",
            f"{len(graceful)} graceful exits (code {128 + signum}{': ' if places else ''}{places})",
        ]
        if default:
            starts = ", ".join(f"{kill.at} s" for kill in default)
            parts.append(f"{len(default)} ended by the default action (no handler; at {starts})")
        if ended:
            parts.append(f"{len(ended)} ended before the signal (exit 0, finished)")
        if other:
            codes = ", ".join(str(kill.code) for kill in other)
            parts.append(f"{len(other)} other exits (codes {codes})")
        parts.append(f"max signal->exit {slowest}")
        if self.finished_early:
            parts.append("the run finished before the last planned signal")
        parts.append(f"{self.leftover_temp_files} temporary files left behind")
        return "; ".join(parts)


# ---------------------------------------------------------------------------- kill plans


def kill_plan(
    count: int,
    seed: int,
    span: float,
    triggers: Sequence[str] | None = None,
    changes: int = 1,
    validation: bool = False,
) -> list[Kill]:
    """``count`` kills from a seeded RNG; ``span``: an uninterrupted run's duration (s).

    Triggers are drawn from :data:`TRIGGERS`, or taken in turn from ``triggers``; file
    triggers fire at the ``changes``-th change of their files after each start.
    ``validation``: a second RNG (of the same seed) turns one kill in each run of
    :data:`VALIDATION_EVERY` into a ``validation`` trigger; the others keep their moments.
    """
    rng = random.Random(seed)
    plan = []
    for number in range(count):
        trigger = triggers[number % len(triggers)] if triggers else rng.choice(TRIGGERS)
        if trigger == "startup":
            delay = rng.uniform(0.05, 3.0)
        elif trigger == "random":
            delay = rng.uniform(0.0, span)
        elif trigger == "validation":
            delay = rng.random()
        else:
            delay = rng.choice([0.0, rng.uniform(0.0, 0.005), rng.uniform(0.0, 0.05)])
        plan.append(Kill(trigger, delay, changes))
    if validation and not triggers:
        other = random.Random(f"validation-{seed}")
        for block in range(0, count, VALIDATION_EVERY):
            number = other.randrange(block, min(block + VALIDATION_EVERY, count))
            plan[number] = Kill("validation", other.random(), changes)
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


def handles(pid: int, signum: int) -> bool | None:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt`` of /proc), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return None


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies excepted)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _step_of(path: str) -> int:
    match = re.search(r"-step=(\d+)\.ckpt$", path)
    return int(match.group(1)) if match else -1


def launch_and_kill(
    args: list[str],
    env: dict[str, str],
    target: Target,
    kill: Kill,
    tmpdir: Path,
    signum: int = signal.SIGKILL,
) -> tuple[int | None, str]:
    """Start ``landseg ARGS``; send ``signum`` to its process group as ``kill`` says.

    Returns (None, stderr) once the signal is sent, (exit code, stderr) when the command
    ended before it. SIGKILL: the command is gone at once. Any other signal: wait for the
    command to exit by itself (SIGKILL after :data:`STOP_TIMEOUT_S`) and record in ``kill``
    its exit code, the seconds from the signal to the exit, whether it had a handler for the
    signal, and where landseg says it stopped.
    """
    with tempfile.TemporaryFile() as stderr:  # not a pipe: a full pipe would stall the command
        code = _launch_and_signal(args, env, target, kill, tmpdir, signum, stderr)
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
    stopped = re.search(r"stopped by SIG\w+ at step (\d+)", err)
    if code is None and stopped:
        kill.stopped, kill.step = stopped.group(0), int(stopped.group(1))
    return code, err


def _launch_and_signal(
    args: list[str],
    env: dict[str, str],
    target: Target,
    kill: Kill,
    tmpdir: Path,
    signum: int,
    stderr: IO[bytes],
) -> int | None:
    """:func:`launch_and_kill` with stderr going to ``stderr``; the exit code or None."""
    patterns = WATCHED.get(kill.trigger, WATCHED["run-state"])
    watch_tmp = tmpdir if kill.trigger in ("checkpoint", "temp-file") else None
    before = snapshot(target.folder, patterns, watch_tmp)
    graceful = signum != signal.SIGKILL
    launched = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "landseg.cli.main", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,  # its own process group: the signal reaches DataLoader workers
        # Ctrl-C's default, even where this script runs with SIGINT ignored (a background job)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    fire_at = launched + kill.delay if kill.trigger == "startup" else None
    changes = 0
    step_times: list[float] = []  # when this start's step checkpoints appeared
    ever_caught = False  # whether the command has had a handler for the signal
    while process.poll() is None:
        now = time.monotonic()
        if graceful and not ever_caught:
            ever_caught = bool(handles(process.pid, signum))
        if fire_at is None:
            seen = snapshot(target.folder, patterns, watch_tmp)
            if seen != before and kill.trigger == "validation":
                new = [path for path in seen if path not in before]
                step_times += [now] if new else []
                if any(_step_of(path) + 1 in target.val_steps for path in new):
                    interval = step_times[-1] - step_times[-2] if len(step_times) > 1 else 0.05
                    kill.delay = round(kill.delay * 2 * interval, 4)
                    fire_at = now + kill.delay
                before = seen
            elif seen != before:
                before, changes = seen, changes + 1
                if changes >= kill.changes:
                    fire_at = now + kill.delay
        if fire_at is not None and now >= fire_at:
            caught = handles(process.pid, signum) if graceful else None
            os.killpg(process.pid, signum)
            kill.at = round(now - launched, 3)
            if not graceful:
                process.wait()
                return None
            claims = _claims(target.folder) if target.name == "cv" else []
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
                kill.code = process.returncode
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            kill.exit_s = round(time.monotonic() - now, 3)
            kill.caught, kill.caught_before = caught, ever_caught
            if target.name == "cv":
                kill.late_claims = _claims(target.folder)[len(claims) :]
            strays = group_members(process.pid)
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            kill.strays = len(strays)
            return None
        time.sleep(POLL_S)
    return process.returncode


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
    try:
        (result,) = query_a_copy(path, "PRAGMA integrity_check")[0]
    except sqlite3.Error as error:
        return f"{path}: {error}"
    return None if result == "ok" else f"{path}: integrity_check says {result}"


def query_a_copy(path: Path, query: str) -> list[tuple[Any, ...]]:
    """``query``'s rows, run on a copy of the job log and its write-ahead log (see
    :func:`sqlite_problem`); sqlite3.Error when it cannot be read."""
    with tempfile.TemporaryDirectory(prefix="torture-sqlite-") as tmp:
        copy = Path(tmp) / path.name
        for suffix in ("", "-wal"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                shutil.copyfile(source, copy.with_name(copy.name + suffix))
        db = sqlite3.connect(copy, timeout=10)
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()


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


def stop_problems(target: Target, kill: Kill, signum: int, err: str) -> list[str]:
    """What is wrong with how the command ended after the graceful signal ``signum``."""
    name = signal.Signals(signum).name
    tail = " | ".join(line for line in err.strip().splitlines()[-4:] if line.strip())[-1000:]
    problems = []
    if kill.strays:
        problems.append(f"{kill.strays} processes of its group outlived it (SIGKILLed)")
    if kill.late_claims:
        problems.append(f"took tasks {kill.late_claims} after {name}: the signal was lost")
    if kill.code is None:
        return [*problems, f"no exit within {STOP_TIMEOUT_S:.0f} s of {name}: SIGKILLed"]
    if kill.exit_s is not None and kill.exit_s > STOP_TIMEOUT_S:
        problems.append(f"{kill.exit_s} s from {name} to the exit")
    if kill.outcome == "default":  # the default action: no handler at that moment
        # (SIGINT: Python always has one, landseg's or its own, so that cannot be told)
        if kill.caught_before and signum != signal.SIGINT:
            problems.append(
                f"killed by {name}'s default action, having handled {name} earlier in this "
                f"start: {tail or 'nothing on stderr'}"
            )
        return problems
    if kill.code == 0:
        if not completed(target):
            problems.append(f"exit 0 after {name}, but the run is not complete: {tail}")
        return problems
    if kill.code != 128 + signum:
        return [*problems, f"exit {kill.code}, expected {128 + signum}: {tail}"]
    if target.name == "train":
        state = _read_quietly(target.folder / "run.json")
        if state is not None and state.get("status") != "interrupted":
            problems.append(f"run.json says {state.get('status')}, expected interrupted")
    else:
        for run_json in sorted(target.folder.glob("tasks/*/run.json")):
            state = _read_quietly(run_json)
            if state is not None and state.get("status") == "running":
                problems.append(f"{run_json}: still says running")
        running = _running_tasks(target.folder / "job.sqlite")
        if running:
            problems.append(f"job log: tasks {running} still running, expected pending")
    return problems


def completed(target: Target) -> bool:
    """Whether the run says it finished (train) or the job wrote its summary (cv)."""
    if target.name == "train":
        return (_read_quietly(target.folder / "run.json") or {}).get("status") == "finished"
    return bool((_read_quietly(target.folder / "summary.json") or {}).get("complete"))


def outcome(kill: Kill, signum: int, completed: bool, err: str = "") -> str:
    """How the command ended after a graceful signal: see :attr:`Kill.outcome`.

    SIGINT's default in Python is a KeyboardInterrupt: one that escapes with a traceback
    (exit 1) came before ``landseg.cli.main.main`` could catch it, since landseg's own handler
    never raises on a first SIGINT."""
    if kill.code == 128 + signum:
        return "graceful"
    if kill.code == -signum or (
        signum == signal.SIGINT and kill.code == 1 and err.rstrip().endswith("KeyboardInterrupt")
    ):
        return "default"
    if kill.code == 0 and completed and not kill.late_claims:
        return "ended"
    return "other"


def _read_quietly(path: Path) -> Any:
    """``path``'s JSON, or None when absent or unreadable (inspect() reports those)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _running_tasks(path: Path) -> list[str]:
    """The tasks the job log says are running."""
    return [
        row[0] for row in job_log_rows(path, "SELECT task_id FROM tasks WHERE status = 'running'")
    ]


def _claims(folder: Path) -> list[str]:
    """Every task claim in the job log of the cv job in ``folder``, oldest first."""
    query = "SELECT task_id FROM events WHERE event = 'claimed' ORDER BY id"
    return [row[0] for row in job_log_rows(folder / "job.sqlite", query)]


def job_log_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    """``query``'s rows in the job log, read from a copy (see sqlite_problem); none when
    the log is absent or unreadable (sqlite_problem reports that)."""
    if not path.exists():
        return []
    try:
        return query_a_copy(path, query)
    except sqlite3.Error:
        return []


def torture(
    target: Target,
    plan: list[Kill],
    env: dict[str, str],
    tmpdir: Path,
    compare: Callable[[], list[str]],
    finish: Callable[[list[str]], int] | None = None,
    log: Callable[[str], None] = print,
    signal_name: str = "KILL",
) -> Report:
    """Kill ``target`` as ``plan`` says, let it finish, check it; ``finish`` runs the last
    start in this process (faster) instead of a new interpreter.

    ``signal_name`` other than KILL: send that signal instead, wait for each stop and check
    it (:func:`stop_problems`) besides the files; a start that ends badly is a problem, and
    the torture goes on with the next start."""
    report = Report(target.name, signal=signal_name, val_steps=target.val_steps)
    signum = SIGNALS[signal_name]
    for number, kill in enumerate(plan, start=1):
        code, err = launch_and_kill(target.args(), env, target, kill, tmpdir, signum)
        if code is not None:  # it ended before the kill
            if code != 0:
                report.problems.append(f"start {number} exited {code}: {err.strip()[-2000:]}")
                return report
            report.finished_early = True
            break
        report.kills.append(kill)
        found = inspect(target.folder)
        when = f"{kill.trigger} +{kill.delay:.3f}s, at {kill.at}s"
        if signum == signal.SIGKILL:
            log(f"{target.name} kill {number}: {when}: {found or 'every file reads'}")
            report.problems += [f"after kill {number} ({kill.trigger}): {p}" for p in found]
            continue
        kill.outcome = outcome(kill, signum, completed(target), err)
        found = stop_problems(target, kill, signum, err) + found
        how = f"exit {kill.code} after {kill.exit_s} s"
        if kill.outcome == "default":
            how += " (the signal's default action: no landseg handler at that moment)"
        log(
            f"{target.name} SIG{signal_name} {number}: {when}: {how}"
            f"{', ' + kill.stopped if kill.stopped else ''}: {found or 'every file reads'}"
        )
        report.problems += [f"after SIG{signal_name} {number} ({kill.trigger}): {p}" for p in found]
        if kill.outcome == "ended":  # the command had done its work
            report.finished_early = True
            break
    if not report.finished_early:
        args = target.args()
        if finish is not None:
            code, err = finish(args), ""
        else:
            done = subprocess.run(
                [sys.executable, "-m", "landseg.cli.main", *args], env=env, capture_output=True
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
    command = [sys.executable, "-m", "landseg.cli.main", "demo-data", str(folder)]
    subprocess.run([*command, "--tiles", "24", "--size", "32"], env=env, check=True)
    return folder / "demo.json"


def train_config(
    demo: Path,
    output: Path,
    epochs: int,
    full: bool,
    step_checkpoints: bool = True,
    loader_workers: int = 0,
    precision: str = "32-true",
) -> dict[str, Any]:
    """The demo config, deterministic, with step checkpoints (every step) unless told not;
    ``full``: TensorBoard, test split and predictions; ``loader_workers`` DataLoader workers;
    ``precision`` pinned (never ``auto``: the same on every host)."""
    config = json.loads(demo.read_text())
    config["device_setup"].update(num_workers=loader_workers, precision=precision)
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


def cv_config(
    demo: Path, output: Path, epochs: int, loader_workers: int = 0, precision: str = "32-true"
) -> dict[str, Any]:
    """Zone 1 held out, zones 2 and 3 take turns as validation set: 2 tasks."""
    config = train_config(
        demo, output, epochs, full=False, loader_workers=loader_workers, precision=precision
    )
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

    from landseg.cli.main import main

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


def validation_steps(*runs: Path) -> frozenset[int]:
    """The global steps at which these (uninterrupted) runs validated, from their history."""
    steps = set()
    for run in runs:
        history = _read_quietly(run / "history.json") or {}
        steps |= {entry["step"] for entry in history.values() if "step" in entry}
    return frozenset(steps)


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
    signal_name: str = "KILL",
    loader_workers: int = 0,
    precision: str = "32-true",
) -> Report:
    """Torture ``landseg train`` in ``work``: reference run, kills (or ``signal_name``
    signals), checks."""
    tmpdir = work / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**env, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": str(THREADS)}
    demo = demo_data(work / "demo", env)
    config = train_config(
        demo, work / "runs", epochs, full, step_checkpoints, loader_workers, precision
    )
    reference = {**config, "output_setup": {**config["output_setup"], "version_name": "ref"}}
    span = timed(["train", "-c", str(write(work / "reference.json", reference))])
    config["output_setup"]["version_name"] = "tortured"
    start = write(work / "start.json", config)
    config["train_setup"]["continue_training"] = True
    resume = write(work / "resume.json", config)
    run, ref = work / "runs" / "torture" / "tortured", work / "runs" / "torture" / "ref"
    args = ["train", "-c", str(start)], ["train", "-c", str(resume)]
    target = Target("train", *args, run, epochs, validation_steps(ref))
    validation = signal_name != "KILL" and step_checkpoints
    plan = kill_plan(kills, seed, span, triggers, changes, validation)
    return torture(
        target,
        plan,
        env,
        tmpdir,
        lambda: compare_runs(run, ref, epochs),
        in_process if finish_here else None,
        log,
        signal_name,
    )


def torture_cv(
    work: Path,
    kills: int,
    seed: int,
    env: dict[str, str],
    *,
    epochs: int = 2,
    signal_name: str = "KILL",
    loader_workers: int = 0,
    precision: str = "32-true",
) -> Report:
    """Torture ``landseg cv`` in ``work``: reference job, kills (or signals), checks."""
    tmpdir = work / "tmp-cv"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**env, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": str(THREADS)}
    demo = work / "demo" / "demo.json"
    if not demo.exists():
        demo_data(demo.parent, env)
    config = cv_config(demo, work / "cv-runs", epochs, loader_workers, precision)
    reference = {**config, "output_setup": {**config["output_setup"], "name_exp_log": "ref"}}
    span = timed(["cv", "-c", str(write(work / "cv-reference.json", reference))])
    config["output_setup"]["name_exp_log"] = "tortured"
    path = write(work / "cv.json", config)
    job, ref = work / "cv-runs" / "tortured", work / "cv-runs" / "ref"
    val_steps = validation_steps(*(ref / "tasks").iterdir())
    target = Target("cv", ["cv", "-c", str(path)], ["cv", "-c", str(path)], job, epochs, val_steps)
    plan = kill_plan(kills, seed, span, validation=signal_name != "KILL")
    compare = lambda: compare_jobs(job, ref, epochs)  # noqa: E731
    return torture(target, plan, env, tmpdir, compare, signal_name=signal_name)


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
    parser.add_argument(
        "--signal",
        choices=list(SIGNALS),
        default="KILL",
        help="KILL (default): kill and restart; TERM, USR1, INT: send it to the process group, "
        "wait for the graceful stop and check it, then restart",
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=0,
        help="device_setup.num_workers of every run (default 0); their processes get the "
        "signal too",
    )
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        default="32-true",
        help="device_setup.precision of every run (default 32-true; never auto, which differs "
        "from host to host)",
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
                    signal_name=args.signal,
                    loader_workers=args.loader_workers,
                    precision=args.precision,
                )
            )
        if args.cv_kills:
            reports.append(
                torture_cv(
                    work,
                    args.cv_kills,
                    args.seed + 1,
                    env,
                    signal_name=args.signal,
                    loader_workers=args.loader_workers,
                    precision=args.precision,
                )
            )
    for report in reports:
        print(report.line())
        for problem in report.problems:
            print(f"  {problem}")
    # a kill is survived when the next start continued the run (a start that fails ends the
    # torture with a problem); problems in the end state are listed above
    if args.signal == "KILL":
        print(f"kills survived: {sum(len(r.kills) for r in reports)}")
    else:
        graceful = sum(len(r.graceful()) for r in reports)
        sent = sum(len(r.kills) for r in reports)
        times = [k.exit_s for r in reports for k in r.kills if k.exit_s is not None]
        print(
            f"SIG{args.signal}: {sent} sent, {graceful} graceful stops survived; "
            f"max signal->exit {max(times, default=0):.2f} s"
        )
    print(f"load after: {load_average()}")
    sys.exit(1 if any(r.problems for r in reports) else 0)


if __name__ == "__main__":
    main()
