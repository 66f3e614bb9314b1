"""`landseg cv` end to end on the demo data: sequential, killed and resumed, workers, MPI; and
how many CPU threads each task gets.

One job (zone 1 held out; zones 2 and 3 take turns as validation set: 2 tasks of 2 epochs,
``deterministic: true``) is run once without interruption; every other way of running it
(``--workers 2``, ``mpiexec -n 3``, killed under one launch and resumed under another) must
write the same summary, to the last bit.
The tests that use it, or train, are ``slow``; the others are not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from landseg.cli.main import main
from landseg.jobs import runner
from landseg.launch.devices import available_cpus
from tests.helpers import (
    cv_config,
    scontrol_calls,
    sigkill_when,
    signal_when,
    slurm_env,
    write_config,
)

TASKS = ["test-1__val-2", "test-1__val-3"]


@pytest.fixture(scope="module")
def reference(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted sequential job; returns its job folder."""
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder / "cv.json", cv_config(demo_dir, folder / "runs"))
    assert main(["cv", "-c", str(config)]) == 0
    return folder / "runs" / "job"


def summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def task_files(job: Path, task: str) -> tuple[dict, dict, list[str]]:
    """History, test history and checkpoint names (top-k by val_loss and val_miou, last)."""
    run = job / "tasks" / task
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    history = json.loads((run / "history.json").read_text())
    return history, json.loads((run / "history_test.json").read_text()), names


def log_rows(job: Path, query: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{job / 'job.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


@pytest.mark.slow
def test_sequential_job_writes_every_output(reference: Path, capsys) -> None:
    result = summary(reference)
    assert result["complete"] and result["tasks_finished"] == 2
    assert list(result["tasks"]) == TASKS
    assert set(result["test_subjects"]) == {"1"}
    assert result["test_subjects"]["1"]["metrics"]["Average/IoU"]["n"] == 2
    for name in ("summary.md", "summary.png", "job.json", "rows.csv", "job.sqlite"):
        assert (reference / name).is_file()
    for task in TASKS:
        run = reference / "tasks" / task
        history, test, names = task_files(reference, task)
        assert list(history) == ["0", "1"] and len(test) == 1
        assert f"{task}-epoch=000.ckpt" in names and f"{task}-epoch=001.ckpt" in names
        state = json.loads((run / "run.json").read_text())
        assert state["status"] == "finished" and state.get("resumed", []) == []
        config = json.loads((run / "config.json").read_text())
        assert config["output_setup"]["version_name"] == task
        assert config["data_source"]["val_file"] == str(run / "val.csv")
        ckpt = torch.load(run / "checkpoints" / f"{task}-epoch=001.ckpt", weights_only=True)
        assert ckpt["epoch"] == 1
    rows = log_rows(reference, "SELECT task_id, status, attempts, worker FROM tasks")
    assert rows == [(task, "finished", 1, "main") for task in TASKS]
    assert log_rows(reference, "SELECT subject, finished FROM subjects") == [("1", 1)]

    config = reference.parent.parent / "cv.json"
    assert main(["cv", "-c", str(config)]) == 0  # nothing left: no task runs again
    assert log_rows(reference, "SELECT SUM(attempts) FROM tasks") == [(2,)]
    assert "| overall" in capsys.readouterr().out


def run_until(config: Path, job: Path, moment: Callable[[Path], bool]) -> int:
    """Start `landseg cv` in a subprocess and SIGKILL it as soon as ``moment(job)`` is true."""
    return sigkill_when(["cv", "-c", str(config)], lambda: moment(job))


def first_checkpoint(job: Path) -> bool:
    return (job / "tasks" / TASKS[0] / "checkpoints" / f"{TASKS[0]}-epoch=000.ckpt").exists()


def first_task_trained(job: Path) -> bool:
    try:
        state = json.loads((job / "tasks" / TASKS[0] / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("status") == "finished"


@pytest.mark.slow
def test_ctrl_c_stops_the_job_with_130_and_a_rerun_equals_uninterrupted(
    reference: Path, make_cv_config, tmp_path: Path
) -> None:
    """SIGINT to the whole process group, as a terminal sends it: the task stops at a
    resumable point and goes back to pending, the command says how to continue, exit 130."""
    config = write_config(tmp_path / "cv.json", make_cv_config())
    job = tmp_path / "runs" / "job"
    returncode, err = signal_when(
        ["cv", "-c", str(config)], lambda: first_checkpoint(job), signal.SIGINT
    )
    assert returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and lines[0].endswith("run the same command again to continue"), err
    assert "Traceback" not in err
    assert log_rows(job, "SELECT status FROM tasks WHERE task_id = 'test-1__val-2'") == [
        ("pending",)
    ]
    assert main(["cv", "-c", str(config)]) == 0
    assert summary(job) == summary(reference)


@pytest.mark.slow
def test_sigkill_twice_then_rerun_equals_uninterrupted(
    reference: Path, make_cv_config, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cv.json", make_cv_config())
    job = tmp_path / "runs" / "job"
    assert run_until(config, job, first_checkpoint) == -signal.SIGKILL  # mid-task
    assert log_rows(job, "SELECT status FROM tasks WHERE task_id = 'test-1__val-2'") == [
        ("running",)
    ]
    assert run_until(config, job, first_task_trained) == -signal.SIGKILL  # after its end
    assert main(["cv", "-c", str(config)]) == 0

    assert summary(job) == summary(reference)
    for task in TASKS:
        assert task_files(job, task) == task_files(reference, task)
        history = (job / "tasks" / task / "history.json").read_text()
        assert history.count('"step"') == 2  # no epoch twice
        state = json.loads((job / "tasks" / task / "run.json").read_text())
        assert state["status"] == "finished"
        assert len(state.get("resumed", [])) == (1 if task == TASKS[0] else 0)
    finished = log_rows(
        job, "SELECT task_id, COUNT(*) FROM events WHERE event = 'finished' GROUP BY task_id"
    )
    assert finished == [(task, 1) for task in sorted(TASKS)]
    assert log_rows(job, "SELECT status, COUNT(*) FROM tasks GROUP BY status") == [("finished", 2)]
    resets = log_rows(job, "SELECT DISTINCT task_id FROM events WHERE event = 'reset'")
    assert ("test-1__val-2",) in resets


def means(job: Path) -> dict[str, float]:
    """Each test subject's mean of each metric (NaN for a metric without a value)."""
    return {
        f"{subject}:{key}": float("nan") if value["mean"] is None else value["mean"]
        for subject, stats in summary(job)["test_subjects"].items()
        for key, value in stats["metrics"].items()
    }


def same_results(job: Path, reference: Path) -> None:
    assert summary(job)["complete"] and list(summary(job)["tasks"]) == TASKS
    assert means(job) == pytest.approx(means(reference), rel=1e-5, nan_ok=True)


def threads_of(job: Path) -> list[tuple]:
    return log_rows(job, "SELECT value FROM job WHERE key = 'task_threads'")


def threads_seen(err: str) -> list[int]:
    """The CPU threads each task ran on, as its first line says."""
    return [int(n) for n in re.findall(r"task \S+: test .*, on (\d+) CPU threads", err)]


@pytest.mark.slow
def test_two_local_workers(reference: Path, make_cv_config, tmp_path: Path, capfd) -> None:
    # a period longer than the run: each task checkpoints only after its last epoch
    config = write_config(tmp_path / "cv.json", make_cv_config(checkpoint_every_n_epochs=3))
    job = tmp_path / "runs" / "job"
    assert main(["cv", "-c", str(config), "--workers", "2"]) == 0
    same_results(job, reference)
    # each worker runs its tasks on the job's threads, as the sequential job did (this
    # host's CPUs): the same float sums, the same summary; a worker on its share of the CPUs
    # summed otherwise
    assert threads_of(job) == threads_of(reference) == [(str(available_cpus()),)]
    assert threads_seen(capfd.readouterr().err) == [available_cpus()] * 2
    assert summary(job) == summary(reference)
    for task in TASKS:
        names = {p.name for p in (job / "tasks" / task / "checkpoints").glob(f"{task}-*")}
        assert names == {f"{task}-epoch=001.ckpt"}
    workers = log_rows(job, "SELECT DISTINCT worker FROM tasks ORDER BY worker")
    assert workers == [("local-1",), ("local-2",)]
    assert log_rows(job, "SELECT SUM(attempts) FROM tasks") == [(2,)]


MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.slow
@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
def test_mpiexec_three_ranks(reference: Path, make_cv_config, tmp_path: Path) -> None:
    pytest.importorskip("mpi4py")
    config = write_config(tmp_path / "cv.json", make_cv_config())
    job = tmp_path / "runs" / "job"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_"))}
    command = [str(MPIEXEC), "-n", "3", sys.executable, "-m", "landseg.cli.main", "cv", "-c"]
    done = subprocess.run(
        [*command, str(config)], env=env, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| overall") == 1  # only rank 0 reports
    same_results(job, reference)
    # the job's threads: not torch's default under mpiexec (its OpenMP runtime gives each
    # rank a share of the cores)
    assert threads_seen(done.stderr) == [available_cpus()] * 2
    assert summary(job) == summary(reference)
    workers = {w for (w,) in log_rows(job, "SELECT worker FROM tasks")}
    # a dynamic queue: which worker rank gets which task depends on timing; rank 0 only hands out
    assert workers and workers <= {"rank-1", "rank-2"}
    assert log_rows(job, "SELECT SUM(attempts) FROM tasks") == [(2,)]


def test_killed_under_two_workers_and_resumed_sequentially_equals_uninterrupted(
    reference: Path, make_cv_config, tmp_path: Path, capfd
) -> None:
    """SIGKILL to the whole `--workers 2` launch mid-task, then the same job run without
    workers: the interrupted task resumes from a checkpoint trained by a worker, on the same
    threads as the rest of the job, and the summary is the uninterrupted job's."""
    config = write_config(tmp_path / "cv.json", make_cv_config())
    job = tmp_path / "runs" / "job"
    returncode, err = signal_when(
        ["cv", "-c", str(config), "--workers", "2"],
        lambda: first_checkpoint(job),
        signal.SIGKILL,
        timeout=300,
    )
    assert returncode == -signal.SIGKILL
    assert main(["cv", "-c", str(config)]) == 0
    seen = threads_seen(err) + threads_seen(capfd.readouterr().err)
    assert len(seen) >= 3 and set(seen) == {available_cpus()}  # the job's, in each launch
    resumed = json.loads((job / "tasks" / TASKS[0] / "run.json").read_text())["resumed"]
    assert len(resumed) == 1  # the first task did continue from the workers' checkpoint
    assert summary(job) == summary(reference)


def test_the_first_launch_fixes_the_threads_and_a_config_cannot_change_them(
    reference: Path, capsys
) -> None:
    """The job's first launch records its thread count (this host's CPUs,
    cross_validation.threads unset); a later config that asks for another count is refused
    with one line naming the key and both counts, by validate and by cv, before any task file
    is written."""
    from landseg.jobs.log import LOG_FILE, JobLog

    recorded = available_cpus()
    assert threads_of(reference) == [(str(recorded),)]
    config = reference.parent.parent / "cv.json"
    other = f"cross_validation.threads={recorded + 1}"

    def files() -> dict[str, bytes]:  # SQLite's -wal and -shm come and go
        return {
            p.name: p.read_bytes()
            for p in reference.iterdir()
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))
        }

    before = files()
    for command in ("validate", "cv"):
        assert main([command, "-c", str(config), "--set", other]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"cross_validation.threads: {recorded} in this job" in line, line
        assert f"{recorded + 1} now" in line and str(reference / LOG_FILE) in line
    after = files()
    assert after.keys() == before.keys()
    assert sorted(name for name in before if after[name] != before[name]) in (
        [],
        ["job.sqlite", "status.json"],  # cv's writer lease: bookkeeping only
    )
    # the recorded count, asked for again, and unset: the job goes on with it
    same = f"cross_validation.threads={recorded}"
    assert main(["validate", "-c", str(config), "--set", same]) == 0
    with JobLog(reference / LOG_FILE, create=False) as log_db:
        assert log_db.fix_threads(None, recorded + 5) == recorded


def test_a_worker_sets_its_threads_before_torch_starts() -> None:
    code = (
        "import os, sys; from landseg.jobs import runner; from landseg.launch import devices\n"
        "assert 'torch' not in sys.modules  # a spawned worker has not imported torch yet\n"
        "devices.limit_threads(1)\n"
        "import torch\n"
        "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], "
        "os.environ['MKL_NUM_THREADS'])\n"
        "print(torch.__config__.parallel_info())"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    first, *info = done.stdout.splitlines()
    assert first == "1 1 1"
    assert any(line.split() == ["omp_get_max_threads()", ":", "1"] for line in info), info


@pytest.mark.slow
def test_cv_under_srun_trains_each_task_alone_and_sigterm_does_not_requeue(
    reference: Path, make_cv_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``srun -n 2 landseg cv``: SLURM says the job has 2 tasks; each cv task still trains in
    its own process (not a DDP run waiting for a second rank). SIGTERM (scancel, preemption)
    stops the job at a checkpoint with 143 and no requeue; the running task goes back to
    pending; the job run again ends with the uninterrupted job's summary."""
    config = write_config(tmp_path / "cv.json", make_cv_config())
    job = tmp_path / "runs" / "job"
    env = slurm_env(tmp_path, job="77", ntasks=2)
    code, err = signal_when(
        ["cv", "-c", str(config)], lambda: first_checkpoint(job), signal.SIGTERM, env=env
    )
    assert code == 143, err
    assert "Traceback" not in err
    assert scontrol_calls(tmp_path) == []
    with sqlite3.connect(job / "job.sqlite") as db:
        statuses = dict(db.execute("SELECT task_id, status FROM tasks").fetchall())
    assert "pending" in statuses.values() and "running" not in statuses.values()

    # run again in this process, with the job's environment (one interpreter start less)
    with monkeypatch.context() as patch:
        for key, value in {**env, "SLURM_RESTART_COUNT": "1"}.items():
            patch.setenv(key, value)
        assert main(["cv", "-c", str(config)]) == 0
    assert summary(job) == summary(reference)


@pytest.mark.slow
def test_cv_status_on_another_host_reads_the_snapshot_not_sqlite(
    reference: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    here = socket.gethostname()
    assert main(["cv", "status", str(reference)]) == 0
    live = capsys.readouterr().out.splitlines()
    monkeypatch.setattr(socket, "gethostname", lambda: "login-node")
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: pytest.fail("opened the SQLite log"))
    assert main(["cv", "status", str(reference)]) == 0
    first, *rest = capsys.readouterr().out.splitlines()
    assert first.startswith(f"snapshot written by {here} at ")
    assert rest == live


def test_a_job_run_by_another_host_is_refused_with_one_line(
    make_cv_config, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from landseg.jobs.log import LOG_FILE, JobLog

    config = write_config(tmp_path / "cv.json", make_cv_config())
    job = tmp_path / "runs" / "job"
    real = socket.gethostname
    monkeypatch.setattr(socket, "gethostname", lambda: "node-a")
    with JobLog(job / LOG_FILE) as log_db:
        log_db.take_writer("elsewhere", now=time.time() - 5)
    monkeypatch.setattr(socket, "gethostname", real)
    assert main(["cv", "-c", str(config)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {job}: this job is being run on host node-a (pid ")
    assert not (job / "tasks").exists()  # nothing planned, nothing trained


@pytest.mark.slow
def test_a_stop_signal_while_the_summary_is_written_lets_it_finish(
    reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's work is done when its summary is written: a SIGTERM then is recorded, not
    given its default action (which ended the process with the summary half made)."""
    from landseg.jobs import summary as summary_module
    from landseg.jobs.plan import prepare_job

    before = summary(reference)
    write = summary_module.write_summary

    def signalled_write(*args: object) -> dict:
        signal.raise_signal(signal.SIGTERM)  # as the job finishes its last task
        return write(*args)  # type: ignore[arg-type]

    def default_action(signum: int, frame: object) -> None:
        raise AssertionError("SIGTERM got its default action")

    monkeypatch.setattr(summary_module, "write_summary", signalled_write)
    previous = signal.signal(signal.SIGTERM, default_action)
    try:
        job, rows = prepare_job(reference.parent.parent / "cv.json", [])
        result = runner.run_job(job, rows)  # the job is complete: nothing is trained again
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result["complete"] and summary(reference) == before


@pytest.mark.slow
def test_a_refused_cv_leaves_the_job_s_files_as_they_were(
    reference: Path, demo_dir: Path, tmp_path: Path, capsys
) -> None:
    """Another set of rows is refused before anything in the job folder is written."""
    lines = (demo_dir / "zones.csv").read_text().splitlines()
    fewer = tmp_path / "zones_less.csv"  # the last tile left out, paths made absolute
    fewer.write_text(
        "\n".join(
            [lines[0]] + [",".join([str(demo_dir / image), str(demo_dir / mask), zone])
                          for image, mask, zone in (line.split(",") for line in lines[1:-1])]
        ) + "\n"
    )  # fmt: skip
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    config = reference.parent.parent / "cv.json"
    # validate makes cv's refusal, and writes nothing at all
    assert main(["validate", "-c", str(config), "--set", "train_setup.lr=0.5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "was started with another config" in line
    assert line.endswith("train_setup.lr: 0.005 in the job, 0.5 now")
    assert {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()} == before
    assert main(["cv", "-c", str(config), "--set", f"cross_validation.file={fewer}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "was started with another config or other rows" in line
    assert line.endswith(f"cross_validation.file: None in the job, '{fewer}' now")  # named
    assert main(["cv", "-c", str(config), "--set", "train_setup.lr=0.5"]) == 2
    assert capsys.readouterr().err.strip().endswith("train_setup.lr: 0.005 in the job, 0.5 now")
    after = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    assert after.keys() == before.keys()
    changed = sorted(name for name in before if after[name] != before[name])
    assert changed == []  # cv's plan refuses from the job log, read: not even a lease taken


@pytest.mark.parametrize("command", ["cv", "tune"])
def test_a_job_folder_that_is_a_file_is_one_line(
    command: str, make_cv_config, tmp_path: Path, capsys
) -> None:
    config = make_cv_config()
    config["search"] = {"params": {"train_setup.lr": {"float": [0.001, 0.01]}}, "trials": 1}
    path = write_config(tmp_path / "cv.json", config)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "job").write_text("not a folder")
    assert main([command, "-c", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("error: output_setup.name_exp_log: cannot make the ")
    assert line.endswith(f"{tmp_path / 'runs' / 'job'} is a file, not a folder")


@pytest.mark.slow
def test_a_damaged_job_log_or_snapshot_and_wrong_folders_are_one_line(
    reference: Path, tmp_path: Path, capsys
) -> None:
    """cv status and cv name the damaged file or what the path is, exit 2, no traceback."""
    job = tmp_path / "job"
    shutil.copytree(reference, job)
    cases = [
        ("job.sqlite", b"garbage", "job.sqlite: not a readable job log (file is not a database)"),
        ("job.sqlite", b"", "job.sqlite: not a readable job log (no such table: job)"),
        ("status.json", b"{bad", "status.json: cannot read the job's status snapshot"),
    ]
    for name, data, expected in cases:
        kept = (job / name).read_bytes()
        (job / name).write_bytes(data)
        assert main(["cv", "status", str(job)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: {job / name}") and expected in line, line
        (job / name).write_bytes(kept)
    config = reference.parent.parent / "cv.json"
    for path, expected in [
        (config, f"{config}: is a file, not a job folder; for a config, use cv status -c {config}"),
        (tmp_path / "nope", f"{tmp_path / 'nope'}: no such job folder"),
        (tmp_path, f"{tmp_path}: not a job folder; the jobs in it: {job}"),
    ]:
        assert main(["cv", "status", str(path)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {expected}"


@pytest.mark.slow
def test_a_task_whose_folder_is_gone_is_trained_again_and_lost_results_are_named(
    reference: Path, tmp_path: Path, capsys
) -> None:
    """A finished task whose run folder was moved away is trained again (deterministic: the
    same summary); one whose test results cannot be read is named with its file; archive
    refuses a task folder, which its job needs where it is."""
    config = str(reference.parent.parent / "cv.json")
    task = reference / "tasks" / TASKS[1]
    assert main(["archive", str(task)]) == 2
    assert f"a task of the cross-validation job {reference}" in capsys.readouterr().err
    before = summary(reference)
    aside = tmp_path / "aside"
    task.rename(aside)
    try:
        assert main(["cv", "-c", config]) == 0
        assert summary(reference) == before
    finally:
        shutil.rmtree(task)
        aside.rename(task)
    results = task / "history_test.json"
    kept = results.read_bytes()
    results.write_text("{bad")
    capsys.readouterr()
    try:
        assert main(["cv", "-c", config]) == 1
        out = capsys.readouterr().out
        assert f"task {TASKS[1]}: its test results {results} are missing or unreadable" in out
    finally:
        results.write_bytes(kept)
        assert main(["cv", "-c", config]) == 0  # the job's summary as it was
    assert summary(reference) == before


@pytest.mark.slow
def test_the_tasks_share_the_output_folder_s_tile_cache(reference: Path) -> None:
    """As the docs say: <output_folder>/.landseg-cache, shared by every job and run there
    (each job had its own in its job folder, and decoded every tile again)."""
    assert (reference.parent / ".landseg-cache").is_dir()
    assert not (reference / ".landseg-cache").exists()
