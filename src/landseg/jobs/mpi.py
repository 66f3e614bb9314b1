"""``mpiexec -n N landseg cv ...``: a dynamic work queue over MPI.

Rank 0 prepares the job, owns the job log (the only writer) and hands out tasks; ranks 1..N-1
are workers that ask for the next task, report its outcome and ask again, until rank 0 tells
them to stop. A worker's GPU is chosen from its rank among the workers of its node
(``COMM_TYPE_SHARED``). Messages are JSON encoded as bytes (``Send``/``Recv`` of buffers),
never pickled.

Stop signals (SIGINT, ``device_setup.stop_signals``; SLURM sends them to every rank): a
worker stops its task at a checkpoint, or stops between tasks, and reports ``stopped``; rank
0 gives that task back (pending), hands out no new task, and once every worker has stopped
exits like a stopped run (128 + the signal; ``scontrol requeue`` on SLURM's SIGUSR1).

mpi4py is imported only here, and this module only when the process was launched by an MPI
launcher (:func:`launched_by_mpi`), so plain runs never initialise MPI.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from landseg.errors import LandsegError, StopRequested
from landseg.jobs.plan import Job, prepare_job
from landseg.jobs.progress import Claim, Worker, writer_lease
from landseg.jobs.runner import (
    Outcome,
    attempt,
    console_logging,
    job_stop_signals,
    job_stopped,
    new_session,
    next_claim,
    pin_gpu,
    record,
    run_job,
    start_job,
    visible_gpus,
)
from landseg.stop_signals import StopSignals

log = logging.getLogger("landseg.cv")

#: Set in every rank by mpiexec/mpirun of MPICH, Intel MPI and Open MPI (PMI), and by PMIx
#: launchers (``srun --mpi=pmix``, Open MPI 5's prterun).
MPI_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALRANKID", "PMIX_RANK")
REQUEST, REPLY, SETUP = 1, 2, 3
#: Seconds between two looks for a message (latency is irrelevant next to a training task).
RECV_POLL_S = 0.05


def launched_by_mpi() -> bool:
    return any(name in os.environ for name in MPI_ENV_VARS)


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
    config_path: Path, overrides: list[str], *, retry_failed: bool, verbose: bool
) -> tuple[Path, dict[str, Any]] | None:
    """Run the job as one rank of an MPI launch; rank 0 returns (job folder, summary)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    index = worker_index(comm)
    if comm.Get_size() < 2:  # a single rank: nobody to hand tasks to
        job, rows = prepare_job(config_path, overrides)
        return job.folder, run_job(job, rows, retry_failed=retry_failed, verbose=verbose)
    if comm.Get_rank() == 0:
        return _coordinate(comm, config_path, overrides, retry_failed)
    _work(comm, index, verbose)
    return None


def _coordinate(
    comm: Any, config_path: Path, overrides: list[str], retry_failed: bool
) -> tuple[Path, dict[str, Any]]:
    """Rank 0: prepare the job, then answer every worker's request until none is left."""
    from mpi4py import MPI

    from landseg.jobs.summary import write_summary

    session = new_session()
    try:
        job, rows = prepare_job(config_path, overrides)
        if job.config.device_setup.starts_processes():
            raise LandsegError(
                "device_setup: under mpiexec each task runs in one process on one device; "
                "the ranks would be taken for DDP processes. Run DDP tasks without mpiexec"
            )
        log_db = start_job(job, rows, session, retry_failed=retry_failed)
    except BaseException as error:
        for rank in range(1, comm.Get_size()):
            _send(
                comm, {"error": str(error).splitlines()[0] if str(error) else "failed"}, rank, SETUP
            )
        raise
    for rank in range(1, comm.Get_size()):
        _send(comm, {"job": str(job.folder)}, rank, SETUP)
    held: dict[int, Claim] = {}
    active = comm.Get_size() - 1
    stopped_by: int | None = None  # a stop signal seen by this rank or reported by a worker
    with log_db, writer_lease(log_db.path, session), StopSignals(job_stop_signals(job)) as stop:
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
                active -= 1
            elif isinstance(claim, float):
                _send(comm, {"wait": claim}, rank, REPLY)
            else:
                held[rank] = claim
                _send(comm, {"task": claim.task_id}, rank, REPLY)
        if stopped_by:  # the tasks in flight went back to pending; a rerun continues them
            raise job_stopped(job, stopped_by)
        return job.folder, write_summary(job, log_db)


def _work(comm: Any, index: int, verbose: bool) -> None:
    """A worker rank: ask rank 0 for a task, run it, report, ask again."""
    pin_gpu(index, visible_gpus())
    import landseg.training.run  # noqa: F401  (the slow imports, while rank 0 plans the job)

    setup, _ = _recv(comm, 0, SETUP)
    if "error" in setup:
        raise SystemExit(2)
    console_logging(verbose)
    job = Job.load(Path(setup["job"]))
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    outcome: dict[str, Any] | None = None
    with StopSignals(job_stop_signals(job)) as stop:

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
                outcome = attempt(job, job.plan.task(reply["task"]), verbose=verbose).to_json()
            except StopRequested as stopped:  # the task stopped at a checkpoint
                _send(comm, {**me, "stopped": stopped.signum}, 0, REQUEST)
                stopped.requeue = False  # rank 0 requeues the job, once
                raise
