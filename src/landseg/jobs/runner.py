"""Running a cross-validation job: each task is a full ``landseg train`` run in its own folder.

Sequential by default; ``--workers N`` runs N worker processes on this machine (spawn context,
one GPU each when there are GPUs); under ``mpiexec`` see :mod:`landseg.jobs.mpi`. Every task
runs on the job's number of CPU threads (:func:`fix_task_threads`), however it is launched:
float sums follow the thread count, and a job's results must not depend on its launch. Every
worker takes the next pending task from the job log, so tasks are handed out dynamically and
each is claimed by one worker at a time. Re-running the command resumes the job: finished
tasks are skipped, and an interrupted task continues from its latest checkpoint (``train``
with a resuming run folder), with its optimiser, scheduler, early-stopping and random state.

This module imports no torch at import time: spawned workers set ``CUDA_VISIBLE_DEVICES``
before anything initialises CUDA, and their thread counts before torch starts.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from landseg.core.errors import LandsegError, StopRequested
from landseg.core.files import atomic_write_text
from landseg.core.signals import StopSignals, pass_on
from landseg.jobs.folder import JobFolder
from landseg.jobs.log import Claim, JobLog, Worker, writer_lease
from landseg.jobs.plan import CvTask, Job, Row, write_task_files
from landseg.launch.cluster import requeue_wanted
from landseg.launch.devices import (
    available_cpus,
    cpu_share,
    limit_threads,
    pin_gpu,
    visible_gpus,
)
from landseg.runs.folder import RUN_DIR_ENV, RunFolder

log = logging.getLogger("landseg.cv")

#: Seconds an idle worker waits before looking again for tasks that others still run.
POLL_S = 2.0


def new_session() -> str:
    """One id per launch of the job: tasks claimed by an earlier launch are told apart."""
    import uuid

    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------------------- one task


def train_task(job: Job, task: CvTask) -> Path:
    """Train (or continue) one task in its folder, from its latest checkpoint if it has one.

    Also the entry point of the extra processes that DDP starts for a task: they re-run the
    ``landseg cv`` command and find their task through ``LANDSEG_RUN_DIR``.
    """
    from landseg.callbacks.checkpoints import EpochCheckpoint
    from landseg.callbacks.progress import quiet_known_noise
    from landseg.training.run import train

    quiet_known_noise()  # in every process that runs tasks: main, --workers, MPI ranks
    run = RunFolder(job.task_dir(task), resuming=True)
    cv = job.config.cross_validation
    every = cv.checkpoint_every_n_epochs if cv is not None else 1
    with isolated_task():
        return train(
            job.task_config(task),
            job.task_summary(task),
            run=run,
            extra_callbacks=[EpochCheckpoint(run.checkpoints, task.id, every)],
            standalone=True,  # a task is one run of its own, not one rank of the SLURM job
        )


#: What Lightning's DDP launcher leaves in the environment of the process that ran a task,
#: and the thread counts a task is given (:func:`task_threads`).
DDP_ENV = (
    "LOCAL_RANK",
    "NODE_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


@contextlib.contextmanager
def isolated_task() -> Iterator[None]:
    """Run one task as if it had the process to itself, so the next task starts afresh.

    After a DDP task, Lightning leaves ``LOCAL_RANK`` set (the next task would not start its
    DDP processes), the process group open and fewer torch threads (a different result).
    """
    import torch

    saved = {name: os.environ.get(name) for name in DDP_ENV}
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        _restore_environment(saved)
        torch.set_num_threads(threads)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _restore_environment(saved: dict[str, str | None]) -> None:
    """Put environment variables back as ``saved`` (None: the variable was not set)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@dataclass(frozen=True)
class Outcome:
    status: str  # finished or failed
    best: dict[str, Any]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "best": self.best, "error": self.error}


@contextlib.contextmanager
def task_threads(threads: int | None) -> Iterator[None]:
    """Run a task on ``threads`` CPU threads (None: as the process is), then put the process's
    count back. The environment carries the count to the task's own DDP processes (Lightning
    leaves a set ``OMP_NUM_THREADS`` alone)."""
    if threads is None:
        yield
        return
    import torch

    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    before = torch.get_num_threads()
    limit_threads(threads)
    try:
        yield
    finally:
        _restore_environment(saved)
        torch.set_num_threads(before)


def attempt(job: Job, task: CvTask, *, threads: int | None = None) -> Outcome:
    """Run a task on ``threads`` CPU threads (the job's: :func:`fix_task_threads`); an error
    fails this task only (recorded, with its traceback in error.txt).

    KeyboardInterrupt, SystemExit and a stop signal (StopRequested) propagate: the task is
    interrupted, not failed.
    """
    folder = RunFolder(job.task_dir(task))
    folder.error_file.unlink(missing_ok=True)
    try:
        with task_threads(threads):
            import torch

            log.info(
                "task %s: test %s, validation %s, on %d CPU threads",
                task.id,
                task.test,
                task.val or "share",
                torch.get_num_threads(),  # what the task runs on, whatever was asked
            )
            train_task(job, task)
        state = folder.state()
        if state.status != "finished":
            raise LandsegError(f"{folder.path}: training ended with status {state.status}")
        return Outcome("finished", dict(state.best))
    except StopRequested:  # a stop signal: the task is interrupted, not failed
        raise
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        log.error("task %s failed: %s", task.id, message.splitlines()[0])
        atomic_write_text(folder.error_file, traceback.format_exc())
        return Outcome("failed", {}, message)


def record(log_db: JobLog, claim: Claim, outcome: Outcome, worker: str) -> None:
    if outcome.status == "finished":
        log_db.finish(claim, outcome.best, worker)
    else:
        log_db.fail(claim, outcome.error or "unknown error", worker)


# ---------------------------------------------------------------------------- the work loop


def next_claim(log_db: JobLog, worker: Worker) -> Claim | float | None:
    """The next task for ``worker``; a number of seconds to wait; or None: nothing is left.

    With nothing pending, tasks whose worker is gone are reset and handed out; an idle worker
    waits while others still run tasks (one of them may die and leave its task to resume).
    """
    claim = log_db.claim(worker)
    if claim is None and log_db.reclaim(worker.session):
        claim = log_db.claim(worker)
    if claim is not None:
        return claim
    return POLL_S if log_db.counts()["running"] else None


def work(
    job: Job,
    log_db: JobLog,
    worker: Worker,
    *,
    parent: int | None = None,
    threads: int | None = None,
) -> None:
    """Take tasks until none is left, each on ``threads`` CPU threads. A worker whose parent
    died takes no new task.

    A stop signal during a task stops the task at a checkpoint (the run's own handler); one
    that arrives between tasks stops the loop before the next claim. Either way the task is
    given back (pending) and :class:`StopRequested` propagates.
    """
    with StopSignals(job_stop_signals(job)) as stop:
        while parent is None or os.getppid() == parent:
            if stop.requested is not None:
                raise job_stopped(job, stop.requested)
            claim = next_claim(log_db, worker)
            if claim is None:
                return
            if isinstance(claim, float):
                time.sleep(claim)
                continue
            task = job.plan.task(claim.task_id)
            try:
                outcome = attempt(job, task, threads=threads)
            except BaseException:
                log_db.release(claim, f"interrupted in {worker.name}")
                raise
            record(log_db, claim, outcome, worker.name)


# ---------------------------------------------------------------------------- local workers


def fix_task_threads(job: Job, log_db: JobLog) -> int:
    """The CPU threads of each task of ``job``, chosen once and kept in its job log.

    Float sums follow the thread count, so a task's results depend on it: every launch of the
    job (sequential, ``--workers``, ``mpiexec``, a resume under another launch) runs every
    task on the same count. ``cross_validation.threads`` when set; else the CPUs the process
    that first starts the job may run on, shared among a task's own DDP processes. Not
    torch's own default, which depends on the launch: its OpenMP runtime gives an MPI rank
    a share of the cores.
    """
    cv = job.config.cross_validation
    wanted = cv.threads if cv is not None else None
    processes = job.config.device_setup.process_count() or 1
    return log_db.fix_threads(wanted, cpu_share(processes))


def threads_notice(threads: int, workers: int, gpus: list[str], job: Job) -> None:
    """Say how many threads each task runs on, and when local workers on the CPU ask for
    more threads than the host has (slower, never different)."""
    log.info("each task runs on %d CPU threads (cross_validation.threads)", threads)
    on_cpu = job.config.device_setup.lightning_args()["accelerator"] == "cpu" or not gpus
    processes = job.config.device_setup.process_count() or 1
    cpus = available_cpus()
    if workers > 1 and on_cpu and workers * processes * threads > cpus:
        log.warning(
            "%d workers x %d threads on %d CPUs: the workers share the cores (a job keeps its "
            "thread count, since its results depend on it; for a new job, "
            "cross_validation.threads: %d shares them out)",
            workers,
            threads,
            cpus,
            max(1, cpus // (workers * processes)),
        )


def console_logging(level: int) -> None:
    """landseg's messages on stderr in a ``--workers`` process, at the level the command
    line chose (its entry point configures the main process's logging)."""
    logger = logging.getLogger("landseg")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


def _local_worker(
    folder: str,
    index: int,
    session: str,
    gpus: list[str],
    level: int,
    parent: int,
    threads: int,
) -> None:
    """Entry point of a ``--workers`` process: its GPU and its CPU threads first (before
    anything imports torch), then the work loop."""
    pin_gpu(index, gpus)
    limit_threads(threads)
    console_logging(level)
    job = Job.load(Path(folder))
    with JobLog(job.files.log, create=False) as log_db:
        worker = Worker.here(f"local-{index + 1}", session)
        try:
            work(job, log_db, worker, parent=parent, threads=threads)
        except (KeyboardInterrupt, StopRequested):
            return  # the task went back to pending (work releases its claim)


def run_local_workers(job: Job, log_db: JobLog, session: str, n: int, threads: int) -> None:
    """N worker processes (spawn: no state inherited from this process); wait for them all.

    Each runs its tasks on the job's ``threads`` (:func:`fix_task_threads`). A worker that
    dies (killed, out of memory) gives its task back at once, so a live worker continues it
    from its checkpoint.
    """
    context = multiprocessing.get_context("spawn")
    gpus = visible_gpus()
    threads_notice(threads, n, gpus, job)
    level = logging.getLogger("landseg").getEffectiveLevel()  # as the command line set it
    processes = [
        context.Process(
            target=_local_worker,
            args=(str(job.folder), i, session, gpus, level, os.getpid(), threads),
            name=f"landseg-cv-{i + 1}",
        )
        for i in range(n)
    ]
    for process in processes:
        process.start()
    alive: dict[Any, Any] = {process.sentinel: process for process in processes}
    with StopSignals(job_stop_signals(job)) as stop:
        forwarded = False
        try:
            while alive:
                if stop.requested is not None and not forwarded:
                    # SLURM and a terminal signal the whole group: the workers have it too;
                    # a signal sent to this process alone is passed on (once: a second
                    # SIGINT would make them stop at once instead of at a checkpoint)
                    forwarded = True
                    if not stop.interrupted:
                        pass_on(stop.requested, (p.pid for p in alive.values()))
                for sentinel in wait(list(alive), timeout=0.5):
                    process = alive.pop(sentinel)
                    process.join()
                    if process.exitcode and process.pid is not None:
                        given_back = log_db.release_pid(
                            process.pid,
                            f"worker {process.name} exited with code {process.exitcode}",
                        )
                        log.warning(
                            "worker %s exited with code %s; tasks given back: %s",
                            process.name,
                            process.exitcode,
                            ", ".join(given_back) or "none",
                        )
        except BaseException:
            for process in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.terminate()
            raise
        if stop.requested is not None:  # every worker stopped at a checkpoint
            raise job_stopped(job, stop.requested)


def job_stop_signals(job: Job) -> list[int]:
    """SIGINT and the config's ``device_setup.stop_signals``, as a run has them."""
    return job.config.device_setup.stop_signal_numbers()


def job_stopped(job: Job, signum: int) -> StopRequested:
    """The stop of a whole job by ``signum``: asks SLURM to requeue it as a run would."""
    stop = StopRequested(signum, 0)
    stop.requeue = requeue_wanted(signum, job.config.device_setup.slurm_requeue)
    return stop


# ---------------------------------------------------------------------------- a job


def start_job(job: Job, rows: list[Row], session: str, *, retry_failed: bool) -> JobLog:
    """Record the plan in the job log, write the task files, reset tasks of dead workers."""
    log_db = JobLog(job.files.log)
    try:
        log_db.take_writer(session)  # before any write: another host may be running the job
        try:
            log_db.sync_plan(_logged_tasks(job), session)
        except LandsegError as refused:
            raise _plan_refusal(job, refused.problems[0]) from refused
        fix_task_threads(job, log_db)  # before any file is written: it may refuse
        gone = [
            task.id
            for task in job.plan.tasks
            if not RunFolder(job.task_dir(task)).run_file.exists()
        ]
        for task_id in log_db.redo_finished(gone, "its run folder is gone: it is trained again"):
            log.warning(
                "task %s: finished, but its run folder is gone (moved, archived or deleted); "
                "it is trained again",
                task_id,
            )
        write_task_files(job, rows)
        job.save()
        if retry_failed:
            log_db.retry_failed()
        for task_id in log_db.reclaim(session):
            log.info("task %s: its worker is gone; it will resume from its checkpoint", task_id)
        finished = log_db.counts()["finished"]
        if finished:  # a re-run: say what it will not train again
            log.info(
                "%d of %d tasks finished in an earlier launch: skipped",
                finished,
                len(job.plan.tasks),
            )
    except BaseException:
        log_db.close()
        raise
    return log_db


def refuse_changed_job(job: Job) -> None:
    """The refusal :func:`start_job` makes of a job folder started with another config or
    other rows, for ``landseg validate``: nothing is written."""
    path = job.files.log
    if not path.is_file():
        return
    cv = job.config.cross_validation
    with JobLog(path, create=False) as log_db:
        problem = log_db.plan_problem(_logged_tasks(job))
        threads = log_db.threads_problem(cv.threads if cv is not None else None)
    if problem is not None:
        raise _plan_refusal(job, problem)
    if threads is not None:
        raise LandsegError(threads)


def _logged_tasks(job: Job) -> list[dict[str, Any]]:
    """The plan's tasks as the job log records them."""
    return [
        {**task.to_json(), "hash": job.hashes[task.id], "run_dir": str(job.task_dir(task))}
        for task in job.plan.tasks
    ]


def _plan_refusal(job: Job, problem: str) -> LandsegError:
    detail = _what_changed(job)
    return LandsegError(problem if detail is None else f"{problem}: {detail}")


def _what_changed(job: Job) -> str | None:
    """What differs from the job as it was started (its job.json), for the refusal's line."""
    from landseg.config.continuation import differences, result_relevant

    try:
        started = Job.load(job.folder)
    except LandsegError:
        return None  # no job.json yet (a kill before it was written), or an older format
    before = result_relevant(started.config.model_dump(mode="json", exclude={"search"}))
    now = result_relevant(job.config.model_dump(mode="json", exclude={"search"}))
    changed = differences(before, now)
    if changed:
        return "; ".join(
            f"{key}: {old!r} in the job, {new!r} now" for key, (old, new) in changed.items()
        )
    if started.split_sizes != job.split_sizes:
        return "the same config, other rows (the job's CSV changed, or its groups)"
    return None


def run_job(
    job: Job,
    rows: list[Row],
    *,
    workers: int = 1,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Run (or resume) every task of the job on this machine; write and return the summary."""
    from landseg.jobs.summary import write_summary

    session = new_session()
    with (
        start_job(job, rows, session, retry_failed=retry_failed) as log_db,
        writer_lease(log_db.path, session),
    ):
        threads = fix_task_threads(job, log_db)
        if workers <= 1:
            threads_notice(threads, 1, [], job)
            work(job, log_db, Worker.here("main", session), threads=threads)
        else:
            run_local_workers(job, log_db, session, workers, threads)
        # every task has had its turn: a stop signal now has nothing left to stop, and its
        # default action would end the process in the middle of the summary; it is recorded
        # instead (and passed on to an enclosing search, which then stops after this trial)
        with StopSignals(job_stop_signals(job)):
            return write_summary(job, log_db)


def ddp_rank_task() -> Path | None:
    """The task folder when this process is an extra DDP process of a task, else None.

    Lightning starts a task's other DDP processes by re-running this command line; the first
    process of the task names its folder in ``LANDSEG_RUN_DIR``.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    return Path(inherited) if inherited else None


def run_ddp_rank(task_dir: Path) -> None:
    """Join the DDP group of the task in ``task_dir`` (its first process writes every file)."""
    job = Job.load(JobFolder.above_task(task_dir).path)
    train_task(job, job.plan.task(task_dir.name))
