"""The job log: what a cross-validation job has done and what it still has to do.

One SQLite file, ``job.sqlite`` in the job folder, instead of a pickled dict: people and
tools read it (``sqlite3 job.sqlite 'select * from tasks'``), every change is one atomic
transaction, and several local worker processes may write it at once (WAL mode, a busy
timeout, ``BEGIN IMMEDIATE`` for claims). Under MPI only rank 0 opens it.

What a job log must record, and where it is:

* test subjects still to train: ``subjects`` (``finished = 0``; view ``subjects_to_train``);
* finished per task: ``tasks.status`` (``pending``, ``running``, ``finished``, ``failed``);
* the current rotation per test subject: ``subjects.current_rotation``;
* each fold's information: the ``tasks`` row (groups, worker, host and pid, config hash,
  start and end, best metrics, error), and every claim, reset and result in ``events``.

A claim is guarded by its attempt number: a worker may record the result of a task only while
the task is still its claim, so a task handed to another worker (after its first worker was
declared dead) is never recorded twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landseg.core.errors import LandsegError
from landseg.core.files import atomic_write_json
from landseg.core.processes import pid_alive, process_start
from landseg.jobs.folder import JobFolder
from landseg.runs.folder import now_iso

LOG_FILE = JobFolder.LOG_FILE
#: The job's state as JSON, rewritten (atomically) after every change by the host that runs
#: the job: what ``landseg cv status`` reads from another host (a login node), which must not
#: open the SQLite file (WAL needs shared memory, so one host only).
SNAPSHOT_FILE = JobFolder.SNAPSHOT_FILE
#: Seconds between two heartbeats of the host that runs a job, and after which a host that
#: stopped beating (killed, its node lost) no longer holds the job.
WRITER_HEARTBEAT_S = 30
WRITER_STALE_S = 120
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "finished", "failed")
#: Seconds a writer waits for another's transaction before giving up.
BUSY_TIMEOUT_S = 120

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS job (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    subject TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    groups TEXT NOT NULL,
    rotations INTEGER NOT NULL,
    current_rotation INTEGER,
    finished INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    subject TEXT NOT NULL REFERENCES subjects (subject),
    rotation INTEGER NOT NULL,
    test_groups TEXT NOT NULL,
    val_groups TEXT NOT NULL,
    train_groups TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN {STATUSES}),
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    host TEXT,
    pid INTEGER,
    pid_start TEXT,
    session TEXT,
    started TEXT,
    ended TEXT,
    best TEXT,
    error TEXT,
    run_dir TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    task_id TEXT,
    event TEXT NOT NULL,
    worker TEXT,
    detail TEXT
);
CREATE VIEW IF NOT EXISTS subjects_to_train AS
    SELECT subject, groups, current_rotation, rotations FROM subjects
    WHERE finished = 0 ORDER BY position;
"""


@dataclass(frozen=True)
class Worker:
    """Who runs a task: a name for people (``main``, ``local-2``, ``rank-3``), host and pid."""

    name: str
    host: str
    pid: int
    session: str

    @classmethod
    def here(cls, name: str, session: str) -> Worker:
        return cls(name, socket.gethostname(), os.getpid(), session)


@dataclass(frozen=True)
class Claim:
    task_id: str
    attempt: int


class JobLog:
    """The SQLite job log of one job folder. Open one per process (connections are not shared)."""

    def __init__(self, path: Path, *, create: bool = True):
        if not create and not path.is_file():
            raise LandsegError(f"{path}: no job log (has this job been started?)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            self._open(create)
        except sqlite3.DatabaseError as error:  # not SQLite, truncated, or not a job log
            self.db.close()
            raise LandsegError(
                f"{path}: not a readable job log ({error}); it is damaged: move it away and "
                "run the job again (tasks whose run folders hold checkpoints continue from them)"
            ) from error

    def _open(self, create: bool) -> None:
        path = self.path
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        if create:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.executescript(_SCHEMA)  # idempotent: IF NOT EXISTS everywhere
            self.db.execute(
                "INSERT OR IGNORE INTO job VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        version = self.meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise LandsegError(f"{path}: job log schema {version}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> JobLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: ``BEGIN IMMEDIATE`` takes the write lock up front (no deadlock).

        The snapshot (:data:`SNAPSHOT_FILE`) is rewritten after every commit.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self.write_snapshot()

    def write_snapshot(self) -> None:
        """``status.json``: the tasks, subjects and counts, and who wrote it when (atomic)."""
        atomic_write_json(
            JobFolder(self.path.parent).snapshot,
            {
                "written": now_iso(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "writer": self.writer(),
                "counts": self.counts(),
                "subjects": self.subjects(),
                "tasks": self.tasks(),
            },
        )

    # ------------------------------------------------------------------ the writing host

    def writer(self) -> dict[str, Any] | None:
        """The host that runs the job: ``{host, pid, session, heartbeat}``, or None."""
        value = self.meta("writer")
        return None if value is None else dict(json.loads(value))

    def take_writer(self, session: str, now: float | None = None) -> None:
        """Make this host the job's only writer, or refuse (LandsegError) while another host
        runs it: its heartbeat is less than :data:`WRITER_STALE_S` old.

        SQLite in WAL mode is safe for several processes of one host, not for several hosts
        (its shared-memory index does not work over network filesystems): one host at a time
        runs a job. Processes of this host share it (``--workers``, a second launch here).
        """
        now = time.time() if now is None else now
        host = socket.gethostname()
        with self.transaction() as db:
            holder = self.writer()
            if holder is not None and holder["host"] != host:
                age = now - float(holder["heartbeat"])
                if age < WRITER_STALE_S:
                    raise LandsegError(
                        f"{self.path.parent}: this job is being run on host {holder['host']} "
                        f"(pid {holder['pid']}, last heartbeat {age:.0f} s ago); one host at a "
                        "time writes a job log. Stop it there, or wait "
                        f"{WRITER_STALE_S - age:.0f} s if that host is gone; `landseg cv "
                        "status` reads its snapshot from any host"
                    )
            record = {"host": host, "pid": os.getpid(), "session": session, "heartbeat": now}
            db.execute(
                "INSERT INTO job VALUES ('writer', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (json.dumps(record),),
            )

    def beat(self, session: str) -> None:
        """Renew this launch's hold on the job, or take it up when nobody holds it (a launch
        of this host that held it has ended)."""
        with self.transaction() as db:
            holder = self.writer()
            if holder is not None and holder["session"] != session:
                return  # another launch holds it (this host's, or a later one's)
            record = {"host": socket.gethostname(), "pid": os.getpid(), "session": session}
            db.execute(
                "INSERT INTO job VALUES ('writer', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (json.dumps({**record, "heartbeat": time.time()}),),
            )

    def release_writer(self, session: str) -> None:
        """Give the job up (the job ended or stopped): any host may run it at once."""
        holder = self.writer()
        if holder is None or holder["session"] != session:
            return
        with self.transaction() as db:
            db.execute("DELETE FROM job WHERE key = 'writer'")

    def _event(self, task_id: str | None, event: str, worker: str | None, detail: Any) -> None:
        text = detail if isinstance(detail, str) or detail is None else json.dumps(detail)
        self.db.execute(
            "INSERT INTO events (time, task_id, event, worker, detail) VALUES (?, ?, ?, ?, ?)",
            (now_iso(), task_id, event, worker, text),
        )

    # ------------------------------------------------------------------ reading

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM job WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def tasks(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM tasks ORDER BY position").fetchall()
        return [_decode(dict(row)) for row in rows]

    def task(self, task_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise LandsegError(f"{self.path}: no task {task_id}")
        return _decode(dict(row))

    def subjects(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM subjects ORDER BY position").fetchall()
        return [{**dict(row), "groups": json.loads(row["groups"])} for row in rows]

    def events(self, task_id: str | None = None) -> list[dict[str, Any]]:
        if task_id is None:
            rows = self.db.execute("SELECT * FROM events ORDER BY id").fetchall()
        else:
            query = "SELECT * FROM events WHERE task_id = ? ORDER BY id"
            rows = self.db.execute(query, (task_id,)).fetchall()
        return [dict(row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
        found = {row["status"]: row["n"] for row in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    # ------------------------------------------------------------------ planning

    def plan_problem(self, tasks: list[dict[str, Any]]) -> str | None:
        """Why :meth:`sync_plan` would refuse ``tasks`` (None: it would not), writing nothing:
        ``landseg validate`` makes the refusal ``landseg cv`` makes."""
        return self._plan_problem(self._known_hashes(self.db), tasks)

    @staticmethod
    def _known_hashes(db: sqlite3.Connection) -> dict[str, str]:
        return {
            row["task_id"]: row["config_hash"]
            for row in db.execute("SELECT task_id, config_hash FROM tasks")
        }

    def _plan_problem(self, known: dict[str, str], tasks: list[dict[str, Any]]) -> str | None:
        dropped = sorted(set(known) - {t["id"] for t in tasks})
        if dropped:
            return (
                f"{self.path.parent}: the job has task {dropped[0]} that the config no "
                "longer plans; restore cross_validation, or set output_setup.name_exp_log "
                "to start a new job"
            )
        changed = [t["id"] for t in tasks if t["id"] in known and known[t["id"]] != t["hash"]]
        if changed:
            return (
                f"{self.path.parent}: task {changed[0]} was started with another config or "
                "other rows; set output_setup.name_exp_log to start a new job, or restore "
                "the config"
            )
        return None

    def sync_plan(self, tasks: list[dict[str, Any]], session: str) -> None:
        """Add the plan's tasks (``CvTask.to_json()`` + ``hash`` + ``run_dir``); check old ones.

        A task already in the log must have the same config hash: its checkpoints and results
        belong to that config. Tasks of the log that the plan no longer names are kept.
        """
        with self.transaction() as db:
            known = self._known_hashes(db)
            problem = self._plan_problem(known, tasks)
            if problem is not None:
                raise LandsegError(problem)
            start = len(known)
            for task in tasks:
                subject_position = db.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
                db.execute(
                    "INSERT OR IGNORE INTO subjects (subject, position, groups, rotations) "
                    "VALUES (?, ?, ?, ?)",
                    (
                        task["subject"],
                        subject_position,
                        json.dumps(task["test"]),
                        task["rotations"],
                    ),
                )
                if task["id"] in known:
                    continue
                db.execute(
                    "INSERT INTO tasks (task_id, position, subject, rotation, test_groups, "
                    "val_groups, train_groups, config_hash, run_dir) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        task["id"],
                        start,
                        task["subject"],
                        task["rotation"],
                        json.dumps(task["test"]),
                        json.dumps(task["val"]),
                        json.dumps(task["train"]),
                        task["hash"],
                        task["run_dir"],
                    ),
                )
                start += 1
                self._event(task["id"], "planned", None, None)
            db.execute(
                "INSERT INTO job VALUES ('created', ?) ON CONFLICT (key) DO NOTHING", (now_iso(),)
            )
            db.execute(
                "INSERT INTO job VALUES ('session', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (session,),
            )
            self._event(None, "launch", None, {"session": session, "host": socket.gethostname()})

    def threads_problem(self, wanted: int | None) -> str | None:
        """Why ``cross_validation.threads: wanted`` is refused in this job, or None."""
        recorded = self.meta("task_threads")
        if recorded is None or wanted is None or wanted == int(recorded):
            return None
        return (
            f"cross_validation.threads: {recorded} in this job (its tasks' results depend on "
            f"it; recorded in {self.path}), {wanted} now: set it back to {recorded}, or start "
            "a new job (another output_setup.name_exp_log)"
        )

    def fix_threads(self, wanted: int | None, default: int) -> int:
        """The CPU threads of every task of the job: recorded by its first launch (``wanted``,
        the config's ``cross_validation.threads``, else ``default``) and kept by every later
        one, whatever its launch; a config that now asks for another count is refused, since
        the tasks' results depend on it."""
        problem = self.threads_problem(wanted)
        if problem is not None:
            raise LandsegError(problem)
        recorded = self.meta("task_threads")
        if recorded is not None:
            return int(recorded)
        threads = wanted if wanted is not None else default
        with self.transaction() as db:
            db.execute(
                "INSERT INTO job VALUES ('task_threads', ?) ON CONFLICT (key) DO NOTHING",
                (str(threads),),
            )
        return int(self.meta("task_threads") or threads)  # another launch may have been first

    # ------------------------------------------------------------------ claims

    def reclaim(
        self, session: str, alive: Callable[[int, str | None], bool] = pid_alive
    ) -> list[str]:
        """Reset to pending the running tasks whose worker is gone; return their ids.

        On this host a worker is gone when its pid is dead. A task claimed on another host is
        reset when it belongs to an earlier launch (its session): the job was restarted, and
        that host's pid cannot be checked from here.
        """
        host = socket.gethostname()
        reset: list[str] = []
        with self.transaction() as db:
            for row in db.execute("SELECT * FROM tasks WHERE status = 'running'").fetchall():
                if row["host"] == host:
                    gone = not alive(row["pid"], row["pid_start"])
                    why = f"pid {row['pid']} on {host} is dead"
                else:
                    gone = row["session"] != session
                    why = f"claimed on {row['host']} by an earlier launch of the job"
                if gone:
                    self._release(row["task_id"], why)
                    reset.append(row["task_id"])
        return reset

    def _release(self, task_id: str, why: str) -> None:
        self.db.execute(
            "UPDATE tasks SET status = 'pending', worker = NULL, host = NULL, pid = NULL, "
            "pid_start = NULL, session = NULL WHERE task_id = ?",
            (task_id,),
        )
        self._event(task_id, "reset", None, why)

    def release(self, claim: Claim, why: str) -> None:
        """Give a claimed task back (interrupted, or its worker died): it will be resumed."""
        with self.transaction() as db:
            if self._owns(db, claim):
                self._release(claim.task_id, why)

    def release_pid(self, pid: int, why: str) -> list[str]:
        """Give back the tasks a dead local worker process held."""
        host = socket.gethostname()
        with self.transaction() as db:
            rows = db.execute(
                "SELECT task_id FROM tasks WHERE status = 'running' AND host = ? AND pid = ?",
                (host, pid),
            ).fetchall()
            for row in rows:
                self._release(row["task_id"], why)
        return [row["task_id"] for row in rows]

    def redo_finished(self, task_ids: list[str], why: str) -> list[str]:
        """Make these finished tasks pending again (their run folders are gone)."""
        done: list[str] = []
        with self.transaction() as db:
            for task_id in task_ids:
                row = db.execute(
                    "SELECT status FROM tasks WHERE task_id = ?", (task_id,)
                ).fetchone()
                if row is not None and row["status"] == "finished":
                    self._release(task_id, why)
                    done.append(task_id)
        return done

    def retry_failed(self) -> list[str]:
        """Make the failed tasks pending again (``landseg cv --retry-failed``)."""
        with self.transaction() as db:
            rows = db.execute("SELECT task_id FROM tasks WHERE status = 'failed'").fetchall()
            for row in rows:
                db.execute(
                    "UPDATE tasks SET status = 'pending' WHERE task_id = ?", (row["task_id"],)
                )
                self._event(row["task_id"], "retry", None, None)
        return [row["task_id"] for row in rows]

    def claim(self, worker: Worker) -> Claim | None:
        """Take the first pending task (in plan order) for ``worker``; None when none is left."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT task_id, subject, rotation FROM tasks WHERE status = 'pending' "
                "ORDER BY position LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, worker = ?, "
                "host = ?, pid = ?, pid_start = ?, session = ?, started = ?, ended = NULL, "
                "error = NULL WHERE task_id = ?",
                (
                    worker.name,
                    worker.host,
                    worker.pid,
                    process_start(worker.pid) if worker.host == socket.gethostname() else None,
                    worker.session,
                    now_iso(),
                    row["task_id"],
                ),
            )
            db.execute(
                "UPDATE subjects SET current_rotation = ? WHERE subject = ?",
                (row["rotation"], row["subject"]),
            )
            attempt = db.execute(
                "SELECT attempts FROM tasks WHERE task_id = ?", (row["task_id"],)
            ).fetchone()[0]
            self._event(row["task_id"], "claimed", worker.name, f"{worker.host} pid {worker.pid}")
            return Claim(row["task_id"], attempt)

    @staticmethod
    def _owns(db: sqlite3.Connection, claim: Claim) -> bool:
        row = db.execute(
            "SELECT status, attempts FROM tasks WHERE task_id = ?", (claim.task_id,)
        ).fetchone()
        return row is not None and row["status"] == "running" and row["attempts"] == claim.attempt

    def finish(self, claim: Claim, best: dict[str, Any], worker: str) -> bool:
        """Record a finished task; False (and nothing changed) if it is no longer this claim."""
        with self.transaction() as db:
            if not self._owns(db, claim):
                self._event(claim.task_id, "stale-result", worker, "finished")
                return False
            db.execute(
                "UPDATE tasks SET status = 'finished', ended = ?, best = ? WHERE task_id = ?",
                (now_iso(), json.dumps(best), claim.task_id),
            )
            self._event(claim.task_id, "finished", worker, best)
            db.execute(
                "UPDATE subjects SET finished = NOT EXISTS (SELECT 1 FROM tasks WHERE "
                "tasks.subject = subjects.subject AND tasks.status != 'finished')"
            )
            return True

    def fail(self, claim: Claim, error: str, worker: str) -> bool:
        """Record a failed task with its error; the job goes on with the others."""
        with self.transaction() as db:
            if not self._owns(db, claim):
                self._event(claim.task_id, "stale-result", worker, error)
                return False
            db.execute(
                "UPDATE tasks SET status = 'failed', ended = ?, error = ? WHERE task_id = ?",
                (now_iso(), error, claim.task_id),
            )
            self._event(claim.task_id, "failed", worker, error)
            return True


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("test_groups", "val_groups", "train_groups", "best"):
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    return row


@contextlib.contextmanager
def writer_lease(path: Path, session: str) -> Iterator[None]:
    """Hold the job for this host while the block runs: a heartbeat every
    :data:`WRITER_HEARTBEAT_S` (a thread with its own connection), released at the end.

    Take it with :meth:`JobLog.take_writer` first; a process killed without releasing it
    holds the job until its heartbeat is :data:`WRITER_STALE_S` old.
    """
    stop = threading.Event()

    def beat() -> None:
        with JobLog(path, create=False) as log_db:
            while not stop.wait(WRITER_HEARTBEAT_S):
                with contextlib.suppress(sqlite3.Error):
                    log_db.beat(session)

    thread = threading.Thread(target=beat, name="landseg-job-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        with JobLog(path, create=False) as log_db:
            log_db.release_writer(session)


class JobSnapshot:
    """A job's :data:`SNAPSHOT_FILE`, read like a :class:`JobLog` by ``landseg cv status``."""

    def __init__(self, path: Path):
        self.path = JobFolder(path.parent).log  # the log it is a snapshot of (for the title)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise LandsegError(
                f"{path}: cannot read the job's status snapshot ({error}); the job log beside "
                "it rewrites it at its next change"
            ) from error
        keys = {"host", "written", "tasks", "counts", "subjects"}
        if not isinstance(data, dict) or not keys <= data.keys():
            raise LandsegError(f"{path}: not a landseg job status snapshot")
        self.data = data

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.data["tasks"])

    def counts(self) -> dict[str, int]:
        return dict(self.data["counts"])

    def subjects(self) -> list[dict[str, Any]]:
        return list(self.data["subjects"])
