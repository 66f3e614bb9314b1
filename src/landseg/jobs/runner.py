"""Running a cross-validation job: each task is a full ``landseg train`` run in its own folder.

Sequential by default; ``--workers N`` runs N worker processes on this machine (spawn context,
one GPU each when there are GPUs, else ``max(1, cpus // N)`` torch threads each: see
:func:`worker_threads`); under ``mpiexec`` see :mod:`landseg.jobs.mpi`. Every worker takes the
next pending task from the job log, so tasks are handed out dynamically and each is claimed by
one worker at a time. Re-running the command resumes the job: finished tasks are
skipped, and an interrupted task continues from its latest checkpoint (``train`` with a resuming
run folder), with its optimiser, scheduler, early-stopping and random state.

This module imports no torch at import time: spawned workers set ``CUDA_VISIBLE_DEVICES``
before anything initialises CUDA, and their thread counts before torch starts.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from landseg.core.errors import LandsegError, StopRequested
from landseg.core.files import atomic_write_text
from landseg.core.signals import StopSignals
from landseg.jobs.log import LOG_FILE, Claim, JobLog, Worker, writer_lease
from landseg.jobs.plan import Job, Row, Task, write_task_files
from landseg.launch.cluster import requeue_wanted
from landseg.runs.folder import RUN_DIR_ENV, RunFolder

log = logging.getLogger("landseg.cv")

#: Seconds an idle worker waits before looking again for tasks that others still run.
POLL_S = 2.0


def new_session() -> str:
    """One id per launch of the job: tasks claimed by an earlier launch are told apart."""
    import uuid

    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------------------- one task


def train_task(job: Job, task: Task) -> Path:
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


#: What Lightning's DDP launcher leaves in the environment of the process that ran a task.
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")


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
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(threads)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class Outcome:
    status: str  # finished or failed
    best: dict[str, Any]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "best": self.best, "error": self.error}


def attempt(job: Job, task: Task) -> Outcome:
    """Run a task; an error fails this task only (recorded, with its traceback in error.txt).

    KeyboardInterrupt, SystemExit and a stop signal (StopRequested) propagate: the task is
    interrupted, not failed.
    """
    log.info("task %s: test %s, validation %s", task.id, task.test, task.val or "share")
    folder = RunFolder(job.task_dir(task))
    folder.error_file.unlink(missing_ok=True)
    try:
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


def work(job: Job, log_db: JobLog, worker: Worker, *, parent: int | None = None) -> None:
    """Take tasks until none is left. A worker whose parent died takes no new task.

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
                outcome = attempt(job, task)
            except BaseException:
                log_db.release(claim, f"interrupted in {worker.name}")
                raise
            record(log_db, claim, outcome, worker.name)


# ---------------------------------------------------------------------------- local workers


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (NVML: no CUDA init)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and not d.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def pin_gpu(index: int, gpus: list[str]) -> None:
    """Give worker ``index`` one GPU (round robin); before anything initialises CUDA."""
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_threads(job: Job, n_workers: int, gpus: list[str]) -> int | None:
    """Torch threads for each of ``n_workers`` local workers; None: leave torch's default.

    On the CPU each worker gets its share of the CPUs, ``max(1, cpus // n_workers)`` (divided
    again among a task's own DDP processes when ``num_processes`` > 1): N workers with all
    threads each would fight over the cores, slower than one worker. A worker on a GPU keeps
    the default (its CPU threads feed the GPU).
    """
    device = job.config.device_setup
    if device.lightning_args()["accelerator"] != "cpu" and gpus:
        return None
    processes = device.process_count() or 1
    return max(1, available_cpus() // (n_workers * processes))


def limit_threads(threads: int) -> None:
    """Use ``threads`` threads in this process: OpenMP's and MKL's (read when torch starts,
    so set before it is imported) and torch's own pool."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


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
    threads: int | None = None,
) -> None:
    """Entry point of a ``--workers`` process: its GPU or its CPU threads first (before
    anything imports torch), then the work loop."""
    pin_gpu(index, gpus)
    if threads is not None:
        limit_threads(threads)
    console_logging(level)
    job = Job.load(Path(folder))
    with JobLog(job.folder / LOG_FILE, create=False) as log_db:
        worker = Worker.here(f"local-{index + 1}", session)
        try:
            work(job, log_db, worker, parent=parent)
        except (KeyboardInterrupt, StopRequested):
            return  # the task went back to pending (work releases its claim)


def run_local_workers(job: Job, log_db: JobLog, session: str, n: int) -> None:
    """N worker processes (spawn: no state inherited from this process); wait for them all.

    On the CPU each worker uses its share of the CPUs (:func:`worker_threads`). A worker that
    dies (killed, out of memory) gives its task back at once, so a live worker continues it
    from its checkpoint.
    """
    context = multiprocessing.get_context("spawn")
    gpus = visible_gpus()
    threads = worker_threads(job, n, gpus)
    level = logging.getLogger("landseg").getEffectiveLevel()  # as the command line set it
    if threads is not None:
        log.info("%d workers on the CPU: %d torch threads each", n, threads)
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
                    if stop.requested != signal.SIGINT:
                        for process in alive.values():
                            if process.pid is not None:
                                with contextlib.suppress(ProcessLookupError):
                                    os.kill(process.pid, stop.requested)
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
    log_db = JobLog(job.folder / LOG_FILE)
    try:
        log_db.take_writer(session)  # before any write: another host may be running the job
        try:
            log_db.sync_plan(_logged_tasks(job), session)
        except LandsegError as refused:
            raise _plan_refusal(job, refused.problems[0]) from refused
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
    path = job.folder / LOG_FILE
    if not path.is_file():
        return
    with JobLog(path, create=False) as log_db:
        problem = log_db.plan_problem(_logged_tasks(job))
    if problem is not None:
        raise _plan_refusal(job, problem)


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
        if workers <= 1:
            work(job, log_db, Worker.here("main", session))
        else:
            run_local_workers(job, log_db, session, workers)
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
    job = Job.load(task_dir.parent.parent)
    train_task(job, job.plan.task(task_dir.name))
