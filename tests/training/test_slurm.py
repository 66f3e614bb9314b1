"""SLURM simulated for real: ``landseg train`` and ``landseg cv`` run with the environment that
``srun`` gives a task and a fake ``scontrol`` on PATH that records its arguments.

SLURM's warning before the time limit (``sbatch --signal=USR1@90``) stops the run at a
resumable point, requeues the job (``scontrol requeue <id>``) and exits 138; the requeued job
(the same command, the same job id) continues the run in ``<output>/slurm/job-<id>`` and ends
exactly like an uninterrupted run. SIGTERM (scancel, preemption) stops without a requeue.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from landseg.cli.main import main
from landseg.launch.cluster import requeue_slurm_job, requeue_wanted, slurm_job_id
from tests.helpers import (
    assert_same_end,
    scontrol_calls,
    signal_when,
    slurm_env,
    stop_and_resume_config,
    write_config,
)

# ---------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("signum", "env", "expected"),
    [
        (signal.SIGUSR1, {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, True),
        (signal.SIGTERM, {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, False),  # scancel
        (signal.SIGINT, {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, False),
        (signal.SIGUSR1, {}, False),  # not under SLURM
        (signal.SIGUSR1, {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7", "SLURM_PROCID": "2"}, False),
        (signal.SIGUSR1, {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "interactive"}, False),
    ],
)
def test_only_slurms_time_limit_warning_requeues(
    signum: int, env: dict[str, str], expected: bool
) -> None:
    assert requeue_wanted(signum, True, env) is expected
    assert requeue_wanted(signum, False, env) is False  # device_setup.slurm_requeue: false


def test_requeue_names_the_array_task_and_never_raises(tmp_path: Path) -> None:
    array = {"SLURM_NTASKS": "1", "SLURM_ARRAY_JOB_ID": "90", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm_job_id({**array, "SLURM_JOB_ID": "93"}) == "90_3"
    calls: list[list[str]] = []

    def fake(args: list[str], **_: object) -> object:
        calls.append(args)
        return type("Done", (), {"returncode": 1, "stderr": "Invalid job id", "stdout": ""})()

    done = requeue_slurm_job({**array, "SLURM_JOB_ID": "93"}, run=fake)  # type: ignore[arg-type]
    assert calls == [["scontrol", "requeue", "90_3"]]
    assert done == (False, "scontrol requeue 90_3 failed (Invalid job id)")

    def missing(args: list[str], **_: object) -> object:
        raise FileNotFoundError(2, "No such file or directory", "scontrol")

    requeued, line = requeue_slurm_job({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "5"}, run=missing)  # type: ignore[arg-type]
    assert not requeued and line.startswith("scontrol requeue 5 failed")


# ---------------------------------------------------------------------------- train


@pytest.mark.slow
def test_usr1_requeues_the_job_and_the_requeued_job_continues_its_run(
    demo_config: dict,
    tmp_path: Path,
    reference_run: Callable[[dict], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stop_and_resume_config(demo_config)
    reference = reference_run(demo_config)

    # no name_exp_log / version_name: the run folder is the job's
    demo_config["output_setup"].pop("name_exp_log", None)
    demo_config["output_setup"].pop("version_name", None)
    config = write_config(tmp_path / "slurm.json", demo_config)
    run = tmp_path / "runs" / "slurm" / "job-4242"
    env = slurm_env(tmp_path)
    code, err = signal_when(
        ["train", "-c", str(config)], (run / "history.json").exists, signal.SIGUSR1, env=env
    )
    assert code == 138, err
    assert scontrol_calls(tmp_path) == ["requeue 4242"]
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and lines[0].endswith(
        "SLURM job 4242 requeued: it continues this run when it starts again"
    ), err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"

    # the requeued job: the same command, the same job id, SLURM's restart count; in this
    # process (one interpreter start less): the signal and its exit status were the process's
    with monkeypatch.context() as patch:
        for key, value in {**env, "SLURM_RESTART_COUNT": "1"}.items():
            patch.setenv(key, value)
        assert main(["train", "-c", str(config)]) == 0
    assert scontrol_calls(tmp_path) == ["requeue 4242"]  # no second requeue
    assert_same_end(run, reference)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert sorted(
        p.name for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")
    ) == ["slurm"]  # the job's run folder, nothing else


def test_processes_that_do_not_match_the_slurm_job_are_one_line_and_exit_2(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """``sbatch --nodes 1 --ntasks-per-node 2`` for a run of 1 process on 2 nodes."""
    job = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2(x1)"}
    for name, value in {**job, "SLURM_NNODES": "1", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(name, value)
    demo_config["device_setup"].update(accelerator="cpu", num_processes=1, num_nodes=2)
    config = write_config(tmp_path / "c.json", demo_config)
    assert main(["train", "-c", str(config)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: device_setup.num_processes: 1 training processes per node, but this SLURM job "
        "runs 2 tasks per node (--ntasks-per-node); under SLURM each process is a task that "
        "srun starts: make them equal",
        "error: device_setup.num_nodes: 2, but this SLURM job has 1 nodes (--nodes): make "
        "them equal",
    ]
    assert not (tmp_path / "runs").exists()
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")  # sbatch --ntasks 2 alone: Lightning's traceback
    assert main(["validate", "-c", str(config)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: device_setup: this SLURM job runs 2 tasks given as --ntasks alone; Lightning "
        "needs them per node: submit with --ntasks-per-node (and --nodes), one task per "
        "training process"
    ]


def test_float16_on_the_cpu_is_refused(demo_config: dict, tmp_path: Path, capsys) -> None:
    """Lightning trains '16-mixed' in bfloat16 on a CPU, and run.json said float16."""
    demo_config["device_setup"].update(accelerator="cpu", precision="16-mixed")
    assert main(["validate", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 2
    assert capsys.readouterr().err.startswith(
        "error: device_setup.precision: '16-mixed' (float16) is for GPUs; this run trains on "
        "the CPU: use 'bf16-mixed', or 'auto'"
    )


@pytest.mark.parametrize(
    ("name", "launched"),
    [("PMI_RANK", True), ("PMIX_RANK", True), ("OMPI_COMM_WORLD_SIZE", True), ("RANK", False)],
)
def test_mpi_launches_are_known_by_pmi_and_pmix(name: str, launched: bool, monkeypatch) -> None:
    """``srun --mpi=pmi2`` sets PMI_RANK, ``srun --mpi=pmix`` PMIX_RANK: both are MPI ranks."""
    from landseg.jobs.mpi import MPI_ENV_VARS, launched_by_mpi

    for other in (*MPI_ENV_VARS, "RANK"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "0")
    assert launched_by_mpi() is launched


@pytest.mark.parametrize("launcher", [None, "OMPI_COMM_WORLD_SIZE", "SLURM_JOB_ID"])
def test_a_process_no_launcher_started_is_alone_without_an_mpi_probe(
    launcher: str | None, monkeypatch
) -> None:
    """Lightning's own choice would import mpi4py and initialise MPI to learn that a plain
    ``landseg train`` is alone; landseg gives it that answer, and leaves launched runs alone."""
    from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment

    from landseg.launch.cluster import MPI_ENV_VARS
    from landseg.training.trainer import trainer_plugins

    for name in (*MPI_ENV_VARS, "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    if launcher:
        monkeypatch.setenv(launcher, "7")
    if launcher == "SLURM_JOB_ID":
        monkeypatch.setenv("SLURM_NTASKS", "1")
    kinds = [type(p) for p in trainer_plugins()[1:]]
    expected = {None: [LightningEnvironment], "OMPI_COMM_WORLD_SIZE": []}
    assert kinds == expected.get(launcher, [SLURMEnvironment])


def test_a_second_run_with_other_settings_in_one_slurm_job_is_told_how_to_name_it(
    demo_config: dict, tmp_path: Path, capsys, monkeypatch
) -> None:
    """An unnamed run's folder is its job's: a second launch in the job with another lr is
    refused, and the line says why that folder and how to start another run."""
    from landseg.config.load import load_config
    from landseg.runs.folder import RunState

    for name, value in slurm_env(tmp_path, job="31").items():
        monkeypatch.setenv(name, value)
    demo_config["output_setup"].pop("name_exp_log", None)
    path = write_config(tmp_path / "c.json", demo_config)
    run = tmp_path / "runs" / "slurm" / "job-31"  # as the job's first run left it
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(load_config(path).model_dump(mode="json")))
    RunState(status="finished", epochs=1, epochs_done=1).write(run)
    assert main(["validate", "-c", str(path), "--set", "train_setup.lr=0.5"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        f"{run}: this SLURM job's run folder holds a run already, which is continued; to start "
        "another run in the same job, set output_setup.name_exp_log or version_name"
    )  # not a requeue (no SLURM_RESTART_COUNT): said even when the settings allow continuing
    assert lines[1] == (
        f"error: {run}: cannot continue this run with these settings (an unnamed run's folder "
        "is its SLURM job's, so that a requeued job continues it; to start another run in the "
        "same job, set output_setup.name_exp_log or version_name)"
    )
