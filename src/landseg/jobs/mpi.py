"""``mpiexec -n N landseg cv ...``: a dynamic work queue over MPI.

Rank 0 prepares the job, owns the job log (the only writer) and hands out tasks; ranks 1..N-1
are workers that ask for the next task, report its outcome and ask again, until rank 0 tells
them to stop. A worker's GPU is chosen from its rank among the workers of its node
(``COMM_TYPE_SHARED``); its CPU threads are the job's, which rank 0 reads from the job log
and sends with the job (:func:`landseg.jobs.runner.fix_task_threads`): not torch's default,
which under ``mpiexec`` is a share of the cores. Messages are JSON encoded as bytes
(``Send``/``Recv`` of buffers), never pickled.

Stop signals (SIGINT, ``device_setup.stop_signals``; SLURM sends them to every rank): a
worker stops its task at a checkpoint, or stops between tasks, and reports ``stopped``; rank
0 gives that task back (pending), hands out no new task, and once every worker has stopped
exits like a stopped run (128 + the signal; ``scontrol requeue`` on SLURM's SIGUSR1).

mpi4py is imported only here, and this module only when the process was launched by an MPI
launcher (:func:`launched_by_mpi`), so plain runs never initialise MPI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from landseg.config.schema import DeviceSetup
from landseg.core.errors import LandsegError, StopRequested
from landseg.core.signals import StopSignals
from landseg.jobs.cv_plan import plan_cv
from landseg.jobs.log import Claim, Worker, writer_lease
from landseg.jobs.plan import Job, Row
from landseg.jobs.runner import (
    Outcome,
    attempt,
    fix_task_threads,
    job_stop_signals,
    job_stopped,
    new_session,
    next_claim,
    record,
    run_job,
    start_job,
)
from landseg.launch.cluster import MPI_ENV_VARS, launched_by_mpi  # noqa: F401 (re-exported)
from landseg.launch.devices import pin_gpu, visible_gpus

log = logging.getLogger("landseg.cv")

REQUEST, REPLY, SETUP = 1, 2, 3
#: Seconds between two looks for a message (latency is irrelevant next to a training task).
RECV_POLL_S = 0.05


def _send(comm: Any, message: dict[str, Any], dest: int, tag: int) -> None:
    from mpi4py import MPI

    comm.Send([json.dumps(message).encode("utf-8"), MPI.BYTE], dest=dest, tag=tag)


def _recv(comm: Any, source: int, tag: int) -> tuple[dict[str, Any], int]:
    """Wait for a message by polling: a blocking MPI receive spins a core at 100 %, which
    would slow down the training of the other ranks on the same node."""
    from mpi4py import MPI

    status = MPI.Status()
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(RECV_POLL_S)
    buffer = bytearray(status.Get_count(MPI.BYTE))
    comm.Recv([buffer, MPI.BYTE], source=status.Get_source(), tag=tag)
    return json.loads(buffer.decode("utf-8")), status.Get_source()


def worker_index(comm: Any) -> int:
    """This worker's index among the worker ranks (rank > 0) of its node, for its GPU."""
    import numpy as np
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks = np.empty(node.Get_size(), dtype=np.int64)
    node.Allgather(np.array([comm.Get_rank()], dtype=np.int64), ranks)
    node.Free()
    workers = sorted(int(r) for r in ranks if r != 0)
    rank = comm.Get_rank()
    return workers.index(rank) if rank in workers else -1


def run_mpi(
    config_path: Path, overrides: list[str], *, retry_failed: bool
) -> tuple[Path, dict[str, Any]] | None:
    """Run the job as one rank of an MPI launch; rank 0 returns (job folder, summary)."""
    with run_mpi_jobs() as run_job:
        if run_job is None:  # a worker rank: rank 0 reports
            return None
        plan = plan_cv(config_path, overrides)
        return plan.job.folder, run_job(plan.job, plan.rows, retry_failed)


#: Rank 0's way to run one job over the worker ranks: (job, rows, retry_failed) -> summary.
MpiJobRunner = Callable[[Job, list[Row], bool], dict[str, Any]]


@contextlib.contextmanager
def run_mpi_jobs() -> Iterator[MpiJobRunner | None]:
    """One rank of an MPI launch that runs one job or several in turn (``landseg tune``).

    Rank 0 gets a function that runs a job over the worker ranks and returns its summary;
    worker ranks serve every job rank 0 runs, then get None (nothing left to do). When rank
    0's block ends, the workers are let go: with an error message (exit 2) when it failed
    before a job started, else quietly.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    index = worker_index(comm)
    if comm.Get_size() < 2:  # a single rank: nobody to hand tasks to
        yield lambda job, rows, retry: run_job(job, rows, retry_failed=retry)
        return
    if comm.Get_rank() != 0:
        _serve(comm, index)
        yield None
        return
    coordinator = _Coordinator(comm)
    try:
        yield coordinator.run
    except StopRequested:
        coordinator.release(None)
        raise
    except BaseException as error:
        coordinator.release(str(error).splitlines()[0] if str(error) else "failed")
        raise
    coordinator.release(None)


class _Coordinator:
    """Rank 0: hands out the tasks of each job it is given; knows which workers wait for the
    next job (a worker that stopped on a signal has left)."""

    def __init__(self, comm: Any):
        self.comm = comm
        self.waiting = set(range(1, comm.Get_size()))

    def release(self, error: str | None) -> None:
        """Tell the waiting workers there is no further job (``error``: rank 0 failed)."""
        message = {"error": error} if error else {"done": True}
        for rank in sorted(self.waiting):
            _send(self.comm, message, rank, SETUP)
        self.waiting.clear()

    def run(self, job: Job, rows: list[Row], retry_failed: bool) -> dict[str, Any]:
        """Answer every worker's request until no task of ``job`` is left; the summary."""
        from mpi4py import MPI

        from landseg.jobs.summary import write_summary

        comm = self.comm
        session = new_session()
        if job.config.device_setup.starts_processes():
            raise LandsegError(
                "device_setup: under mpiexec each task runs in one process on one device; "
                "the ranks would be taken for DDP processes. Run DDP tasks without mpiexec"
            )
        log_db = start_job(job, rows, session, retry_failed=retry_failed)
        # the workers run every task on the job's threads (only this rank reads the job log)
        threads = fix_task_threads(job, log_db)
        log.info("each task runs on %d CPU threads (cross_validation.threads)", threads)
        serving = sorted(self.waiting)
        for rank in serving:
            _send(comm, {"job": str(job.folder), "threads": threads}, rank, SETUP)
        self.waiting.clear()
        held: dict[int, Claim] = {}
        active = len(serving)
        stopped_by: int | None = None  # a stop signal seen by this rank or reported by a worker
        with (
            log_db,
            writer_lease(log_db.path, session),
            StopSignals(job_stop_signals(job)) as stop,
        ):
            while active:
                message, rank = _recv(comm, MPI.ANY_SOURCE, REQUEST)
                worker = Worker(f"rank-{rank}", message["host"], message["pid"], session)
                if message.get("stopped"):  # the worker stopped at a checkpoint and exits
                    stopped_by = stopped_by or int(message["stopped"])
                    if rank in held:
                        log_db.release(held.pop(rank), f"stopped in {worker.name}")
                    active -= 1
                    continue
                if message.get("outcome") and rank in held:
                    record(log_db, held.pop(rank), Outcome(**message["outcome"]), worker.name)
                stopped_by = stopped_by or stop.requested
                claim = None if stopped_by else next_claim(log_db, worker)
                if claim is None:
                    _send(comm, {"stop": True}, rank, REPLY)
                    self.waiting.add(rank)  # it waits for the next job
                    active -= 1
                elif isinstance(claim, float):
                    _send(comm, {"wait": claim}, rank, REPLY)
                else:
                    held[rank] = claim
                    _send(comm, {"task": claim.task_id}, rank, REPLY)
            if stopped_by:  # the tasks in flight went back to pending; a rerun continues them
                raise job_stopped(job, stopped_by)
            return write_summary(job, log_db)


def _serve(comm: Any, index: int) -> None:
    """A worker rank: serve each job rank 0 announces, until it says there is none left."""
    pin_gpu(index, visible_gpus())
    import landseg.training.run  # noqa: F401  (the slow imports, while rank 0 plans the job)

    with StopSignals(
        DeviceSetup().stop_signal_numbers()
    ) as waiting:  # until a job's own config says which
        while True:
            setup, _ = _recv(comm, 0, SETUP)
            if "error" in setup:
                raise SystemExit(2)
            if setup.get("done"):
                if waiting.requested is not None:  # signalled between two jobs
                    raise StopRequested(waiting.requested, 0)
                return
            job = Job.load(Path(setup["job"]))
            _work(comm, job, waiting.requested, int(setup["threads"]))


def _work(comm: Any, job: Job, signalled: int | None, threads: int) -> None:
    """Serve one job: ask rank 0 for a task, run it on the job's ``threads``, report, ask
    again, until told to stop.

    ``signalled``: a stop signal received while waiting for the job, acted on at once."""
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    outcome: dict[str, Any] | None = None
    with StopSignals(job_stop_signals(job)) as stop:
        stop.requested = signalled

        def stop_if_signalled() -> None:
            """Between tasks: tell rank 0 (it gives back a task it just handed out), stop."""
            if stop.requested is not None:
                _send(comm, {**me, "stopped": stop.requested}, 0, REQUEST)
                stopped = job_stopped(job, stop.requested)
                stopped.requeue = False  # rank 0 requeues the job, once
                raise stopped

        while True:
            stop_if_signalled()
            _send(comm, {**me, "outcome": outcome}, 0, REQUEST)
            reply, _ = _recv(comm, 0, REPLY)
            outcome = None
            if reply.get("stop"):
                return
            if "wait" in reply:
                time.sleep(float(reply["wait"]))
                continue
            stop_if_signalled()
            try:
                task = job.plan.task(reply["task"])
                outcome = attempt(job, task, threads=threads).to_json()
            except StopRequested as stopped:  # the task stopped at a checkpoint
                _send(comm, {**me, "stopped": stopped.signum}, 0, REQUEST)
                stopped.requeue = False  # rank 0 requeues the job, once
                raise
