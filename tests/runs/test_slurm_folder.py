"""Inside a SLURM job, a run without a name lives in <output>/slurm/job-<id>, and a relaunch of
the same job (a requeue) continues it; no other launch silently continues a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from landseg.config.schema import LandsegConfig
from landseg.runs.folder import RunState, resolve_run_folder, slurm_job_name

BATCH = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train.sbatch"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        (BATCH, "job-4242"),
        ({**BATCH, "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}, "job-4240_2"),
        ({**BATCH, "SLURM_JOB_NAME": "bash"}, None),  # an interactive shell in an allocation
        ({**BATCH, "SLURM_JOB_NAME": "interactive"}, None),
    ],
)
def test_slurm_job_name_as_lightning_detects_slurm(
    env: dict[str, str], expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for name in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert slurm_job_name() == expected
    assert SLURMEnvironment.detect() == (expected is not None)


def config(tmp_path: Path, **output: str) -> LandsegConfig:
    return LandsegConfig.model_validate(
        {
            "data_source": {"train_file": str(tmp_path / "train.csv")},
            "train_setup": {"model_name": "lightunet"},
            "output_setup": {"output_folder": str(tmp_path / "out"), **output},
        }
    )


def test_a_requeued_job_continues_its_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in BATCH.items():
        monkeypatch.setenv(name, value)
    first = resolve_run_folder(config(tmp_path))
    assert first.path == tmp_path / "out" / "slurm" / "job-4242" and not first.resuming
    RunState(status="interrupted", epochs_done=3).write(first.path)
    again = resolve_run_folder(config(tmp_path))  # the same job, requeued
    assert again.path == first.path and again.resuming

    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # another job: another folder
    assert resolve_run_folder(config(tmp_path)).path.name == "job-4243"
    named = resolve_run_folder(config(tmp_path, name_exp_log="exp", version_name="v1"))
    assert named.path == tmp_path / "out" / "exp" / "v1"  # a named run is the user's choice
