"""The SQLite job log: claims, results, resets of dead workers, concurrent writers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from landseg.core.errors import LandsegError
from landseg.core.processes import pid_alive, process_start
from landseg.jobs.log import LOG_FILE, Claim, JobLog, Worker


def planned(n: int = 3, hash_: str = "h") -> list[dict]:
    subjects = ["a", "a", "b", "b", "c", "c"]
    return [
        {
            "id": f"task{i}",
            "subject": subjects[i],
            "rotation": i % 2 + 1,
            "rotations": 2,
            "test": [subjects[i]],
            "val": ["x"],
            "train": ["y"],
            "hash": hash_,
            "run_dir": f"/runs/task{i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def job_log(tmp_path: Path):
    with JobLog(tmp_path / LOG_FILE) as log_db:
        log_db.sync_plan(planned(4), "s1")
        yield log_db


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claims_follow_the_plan_and_record_the_fold(job_log: JobLog) -> None:
    worker = Worker.here("main", "s1")
    first = job_log.claim(worker)
    assert first == Claim("task0", 1)
    row = job_log.task("task0")
    assert row["status"] == "running" and row["worker"] == "main" and row["pid"] == worker.pid
    assert row["session"] == "s1" and row["started"] and row["test_groups"] == ["a"]
    assert job_log.subjects()[0]["current_rotation"] == 1
    assert job_log.finish(first, {"val_miou": 0.5}, "main")
    assert job_log.task("task0")["best"] == {"val_miou": 0.5}
    assert job_log.subjects()[0]["finished"] == 0  # task1 is a's second rotation
    second = job_log.claim(worker)
    assert job_log.fail(second, "RuntimeError: boom", "main")
    assert job_log.counts() == {"finished": 1, "running": 0, "pending": 2, "failed": 1}
    assert job_log.retry_failed() == ["task1"]
    assert job_log.claim(worker) == Claim("task1", 2)
    events = [e["event"] for e in job_log.events("task1")]
    assert events == ["planned", "claimed", "failed", "retry", "claimed"]


def test_a_stale_claim_cannot_record(job_log: JobLog) -> None:
    worker = Worker.here("w", "s1")
    claim = job_log.claim(worker)
    job_log.release(claim, "worker died")
    again = job_log.claim(worker)
    assert again == Claim("task0", 2)
    assert not job_log.finish(claim, {}, "w")  # the first claim lost the task
    assert job_log.task("task0")["status"] == "running"
    assert job_log.finish(again, {}, "w")
    assert [e["event"] for e in job_log.events("task0")].count("finished") == 1


def test_dead_workers_and_earlier_launches_are_reset(job_log: JobLog) -> None:
    mine = Worker.here("main", "s1")
    alive = job_log.claim(mine)
    gone = job_log.claim(Worker(mine.name, mine.host, dead_pid(), "s1"))
    remote_old = job_log.claim(Worker("rank-1", "elsewhere", 123, "s0"))
    remote_now = job_log.claim(Worker("rank-2", "elsewhere", 124, "s2"))
    assert job_log.reclaim("s2") == [gone.task_id, remote_old.task_id]
    assert job_log.task(alive.task_id)["status"] == "running"
    assert job_log.task(remote_now.task_id)["status"] == "running"
    assert job_log.task(gone.task_id)["status"] == "pending"
    assert "is dead" in job_log.events(gone.task_id)[-1]["detail"]


def test_pid_checks() -> None:
    import os

    assert pid_alive(os.getpid(), process_start(os.getpid()))
    assert not pid_alive(dead_pid(), None)
    assert not pid_alive(os.getpid(), "1")  # same pid, another process start: reused pid


def test_the_plan_must_match_the_log(tmp_path: Path) -> None:
    with JobLog(tmp_path / LOG_FILE) as log_db:
        log_db.sync_plan(planned(2), "s1")
        log_db.sync_plan(planned(3), "s2")  # one more test subject: added
        assert [t["task_id"] for t in log_db.tasks()] == ["task0", "task1", "task2"]
        with pytest.raises(LandsegError, match="task task0 was started with another config"):
            log_db.sync_plan(planned(3, hash_="other"), "s3")
        with pytest.raises(LandsegError, match="task task2 that the config no longer plans"):
            log_db.sync_plan(planned(2), "s3")
        assert log_db.meta("session") == "s2"


def test_the_log_is_plain_sqlite(job_log: JobLog) -> None:
    db = sqlite3.connect(job_log.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in db.execute("SELECT subject FROM subjects_to_train")] == ["a", "b"]
    assert json.loads(db.execute("SELECT test_groups FROM tasks").fetchone()[0]) == ["a"]
    db.close()
    with pytest.raises(LandsegError, match="no job log"):
        JobLog(job_log.path.parent / "missing" / LOG_FILE, create=False)


def test_concurrent_workers_claim_each_task_once(tmp_path: Path) -> None:
    """Three processes race for 30 tasks; each task is claimed and finished exactly once."""
    with JobLog(tmp_path / LOG_FILE) as log_db:
        tasks = planned(1) * 30
        log_db.sync_plan([{**t, "id": f"t{i:02d}"} for i, t in enumerate(tasks)], "s")
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from landseg.jobs.log import JobLog, Worker
        with JobLog(Path({str(tmp_path / LOG_FILE)!r}), create=False) as log_db:
            worker = Worker.here("w", "s")
            while (claim := log_db.claim(worker)) is not None:
                assert log_db.finish(claim, {{}}, worker.name)
        """
    )
    processes = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    with JobLog(tmp_path / LOG_FILE, create=False) as log_db:
        assert log_db.counts()["finished"] == 30
        events = [e for e in log_db.events() if e["event"] in ("claimed", "finished")]
        assert len(events) == 60
        assert all(t["attempts"] == 1 for t in log_db.tasks())


# ---------------------------------------------------------------------------- one writing host


def test_the_snapshot_follows_every_change(job_log: JobLog, tmp_path: Path) -> None:
    from landseg.jobs.log import SNAPSHOT_FILE, JobSnapshot

    claim = job_log.claim(Worker.here("main", "s1"))
    assert claim is not None
    snapshot = JobSnapshot(tmp_path / SNAPSHOT_FILE)
    assert (
        snapshot.counts()
        == job_log.counts()
        == {
            "pending": 3,
            "running": 1,
            "finished": 0,
            "failed": 0,
        }
    )
    assert snapshot.tasks() == job_log.tasks() and snapshot.subjects() == job_log.subjects()
    job_log.finish(claim, {"val_miou": 0.25}, "main")
    assert JobSnapshot(tmp_path / SNAPSHOT_FILE).tasks()[0]["best"] == {"val_miou": 0.25}
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_a_second_host_cannot_run_a_job_another_host_runs(
    job_log: JobLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from landseg.jobs.log import WRITER_STALE_S

    monkeypatch.setattr(socket, "gethostname", lambda: "node-a")
    job_log.take_writer("s1", now=1000.0)
    job_log.take_writer("s2", now=1001.0)  # another launch on the same host shares it
    monkeypatch.setattr(socket, "gethostname", lambda: "node-b")
    events = len(job_log.events())
    with pytest.raises(LandsegError, match=r"being run on host node-a .* last heartbeat 9 s ago"):
        job_log.take_writer("s3", now=1010.0)
    assert len(job_log.events()) == events and job_log.writer()["host"] == "node-a"
    # node-a stopped beating (killed, node lost): after WRITER_STALE_S node-b may take over
    job_log.take_writer("s3", now=1001.0 + WRITER_STALE_S)
    assert job_log.writer()["host"] == "node-b"
    job_log.release_writer("s1")  # not the holder: nothing happens
    assert job_log.writer()["host"] == "node-b"
    job_log.release_writer("s3")
    assert job_log.writer() is None
