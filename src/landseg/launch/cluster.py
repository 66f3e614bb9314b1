"""Where this process was launched: a SLURM allocation, torchrun, or a launcher of its own.

Read from the environment only, as Lightning's cluster environments read it (the names and the
rules are theirs: ``SLURMEnvironment.detect``, ``TorchElasticEnvironment.detect``, the
``LOCAL_RANK``/``NODE_RANK`` of its default environment), so that landseg and the Lightning
trainer it builds always agree on which process is which. Layer 0: no landseg imports.

- :func:`slurm_job_id` and :func:`in_slurm_batch`: the SLURM job a run belongs to (its run
  folder is named after it, and a requeue names it to ``scontrol``);
- :func:`requeue_slurm_job`: ``scontrol requeue <job>``, after a run stopped at a resumable
  point on the signal that SLURM sends before the time limit;
- :func:`external_launch`: the rank of this process among the processes that a launcher
  (``srun``, ``torchrun``, one command per node) started, when there are several; only global
  rank 0 chooses and writes the run folder, the others are told which it is.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from landseg.core.signals import REQUEUE_SIGNAL

log = logging.getLogger("landseg.launch.cluster")

#: ``SLURM_JOB_NAME`` of an interactive shell inside an allocation, which Lightning (and so
#: landseg) does not treat as a SLURM batch job (``srun --job-name=interactive --pty bash``).
INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def in_slurm_batch(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a task of a SLURM job (as ``SLURMEnvironment.detect`` says)."""
    env = _env(environ)
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The job's id as ``scontrol`` takes it: ``<array job id>_<task id>`` for an array task,
    else ``SLURM_JOB_ID``; None outside a SLURM batch job."""
    env = _env(environ)
    if not in_slurm_batch(env):
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


def requeue_wanted(signum: int, enabled: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a stop by ``signum`` asks SLURM to requeue the job (``slurm_requeue``).

    Only SIGUSR1, the signal ``sbatch --signal=USR1@90`` sends before the time limit: SIGTERM
    comes from ``scancel`` (the user wants the job gone) or from preemption (SLURM requeues
    preempted jobs itself when its PreemptMode says so). Only the job's first task asks
    (``SLURM_PROCID`` 0), so ``srun -n 8`` requeues once.
    """
    env = _env(environ)
    return (
        enabled
        and signum == REQUEUE_SIGNAL
        and in_slurm_batch(env)
        and env.get("SLURM_PROCID", "0") == "0"
    )


def requeue_slurm_job(
    environ: Mapping[str, str] | None = None,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> tuple[bool, str]:
    """Ask SLURM to requeue this job (``scontrol requeue <id>``): (whether it was, one line
    saying what happened).

    Never raises: the run is already checkpointed and marked interrupted, so a failed requeue
    (no ``scontrol``, a job that is not requeueable) only means the user continues it; the
    caller says how (a resubmitted job has another id, and an unnamed run another folder).
    """
    job = slurm_job_id(environ)
    if job is None:
        return False, "not a SLURM batch job: nothing to requeue"
    try:
        done = run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"scontrol requeue {job} failed ({error})"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        return (
            False,
            f"scontrol requeue {job} failed ({why[0] if why else f'exit {done.returncode}'})",
        )
    return True, f"SLURM job {job} requeued: it continues this run when it starts again"


#: Set in every rank by mpiexec/mpirun of MPICH, Intel MPI and Open MPI (PMI), and by PMIx
#: launchers (``srun --mpi=pmix``, Open MPI 5's prterun).
MPI_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALRANKID", "PMIX_RANK")


def launched_by_mpi(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an MPI launcher started this process (without importing mpi4py or MPI)."""
    env = _env(environ)
    return any(name in env for name in MPI_ENV_VARS)


def global_rank_zero(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0 of its launch (or runs alone), by its environment.

    SLURM's ``SLURM_PROCID``, torchrun's ``RANK``, and for the processes Lightning starts
    itself ``LOCAL_RANK`` and ``NODE_RANK``: what prints the run's closing lines once.
    """
    env = _env(environ)
    if in_slurm_batch(env) and env.get("SLURM_PROCID", "0") != "0":
        return False
    if "TORCHELASTIC_RUN_ID" in env and env.get("RANK", "0") != "0":
        return False
    return env.get("LOCAL_RANK", "0") == "0" and env.get("NODE_RANK", "0") == "0"


@dataclass(frozen=True)
class ExternalLaunch:
    """This process among ``size`` processes that a launcher started (each runs ``landseg``).

    ``rank`` 0 is the process of global rank 0 (it chooses the run folder); ``address`` and
    ``port`` are those of the distributed group (``MASTER_ADDR``, ``MASTER_PORT``), where rank 0
    tells the others which run folder and checkpoint to use before the group itself starts.
    """

    kind: str  # slurm, torchelastic or nodes
    rank: int
    size: int
    address: str
    port: int


def external_launch(
    num_nodes: int, environ: Mapping[str, str] | None = None
) -> ExternalLaunch | None:
    """The launch this process belongs to when a launcher started several landseg processes.

    - SLURM (``srun``): every rank is a SLURM task: ``SLURM_PROCID`` of ``SLURM_NTASKS``;
    - torchrun: every rank is started by torchelastic: ``RANK`` of ``WORLD_SIZE``;
    - one command per node with ``NODE_RANK`` (Lightning's default environment, which then
      starts the node's other processes itself): the node's first process, rank
      ``NODE_RANK`` of ``num_nodes``.

    None for a single process, and for a process that Lightning started for a run (those
    inherit the run folder from the process that started them). The address and port are
    those Lightning's environment will use (``MASTER_ADDR``/``MASTER_PORT``; under SLURM the
    first node of ``SLURM_NODELIST`` and a port derived from the job id, as Lightning does).
    """
    env = _env(environ)
    if in_slurm_batch(env):
        size = int(env.get("SLURM_NTASKS", "1"))
        if size <= 1:
            return None
        from lightning.fabric.plugins.environments import SLURMEnvironment

        slurm = SLURMEnvironment(auto_requeue=False)
        return ExternalLaunch(
            "slurm", int(env["SLURM_PROCID"]), size, slurm.main_address, slurm.main_port
        )
    if "TORCHELASTIC_RUN_ID" in env:  # torch.distributed.is_torchelastic_launched()
        size = int(env.get("WORLD_SIZE", "1"))
        if size <= 1:
            return None
        return ExternalLaunch(
            "torchelastic",
            int(env.get("RANK", "0")),
            size,
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", "29500")),
        )
    if num_nodes > 1 and "LOCAL_RANK" not in env and "NODE_RANK" in env:
        return ExternalLaunch(
            "nodes",
            int(env["NODE_RANK"]),
            num_nodes,
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", "29500")),
        )
    return None
