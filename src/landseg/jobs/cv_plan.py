"""The plan of ``landseg cv``: the checked job and its refusals, before anything is written.

:func:`plan_cv` is what ``landseg cv`` (locally and under mpiexec) and ``landseg validate`` both
call for a config with ``cross_validation``: the job planned and checked
(:func:`~landseg.jobs.plan.prepare_job`: config, groups, tasks, every row's data), then the
refusal of a job folder started with another config or other rows. ``landseg cv`` runs the
plan (:func:`landseg.jobs.runner.run_job`); validate prints it (:meth:`CvPlan.describe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landseg.jobs.log import JobLog
from landseg.jobs.plan import Job, Row, prepare_job
from landseg.jobs.runner import refuse_changed_job


@dataclass(frozen=True)
class CvPlan:
    """A job, checked and accepted by its job folder, and the rows its tasks use."""

    job: Job
    rows: list[Row]

    def describe(self) -> list[str]:
        """What ``landseg validate`` prints of the plan."""
        lines = [job_line(self.job)]
        path = self.job.files.log
        if path.is_file():  # a job started earlier: what a re-run continues
            with JobLog(path, create=False) as log_db:
                counts = log_db.counts()
            done = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
            lines.append(f"job folder {self.job.folder}: continues ({done})")
        else:
            lines.append(f"job folder {self.job.folder}: starts")
        return lines + data_lines(self.job)


def plan_cv(
    config_path: Path,
    overrides: list[str],
    *,
    device_check: bool = True,
    dry_run: bool = False,
) -> CvPlan:
    """``landseg cv -c CONFIG``'s plan: every check and refusal, in cv's order; nothing is
    written (``dry_run``: the spatial blocks' map is not drawn either)."""
    job, rows = prepare_job(config_path, overrides, dry_run=dry_run, device_check=device_check)
    refuse_changed_job(job)  # the job log's refusal of another config, before it is written
    return CvPlan(job, rows)


def job_line(job: Job) -> str:
    """``cross-validation: 3 groups, 3 test subjects, 6 tasks, tiles per task: ...``."""
    tasks = job.plan.tasks
    return (
        f"cross-validation: {len(job.plan.groups)} groups, {len(job.plan.subjects)} test "
        f"subjects, {len(tasks)} tasks, "
        f"{task_splits(job.split_sizes, 'windows' if job.config.data_source.windows else 'tiles')}"
    )


def data_lines(job: Job) -> list[str]:
    """What every row of the job looks like (each task's split sizes are the job line's)."""
    summary = job.summary
    return [
        f"{summary.n_classes} classes ({', '.join(summary.class_labels)}), "
        f"{summary.n_image_bands} image bands, patches {summary.patch_size[0]}x"
        f"{summary.patch_size[1]}",
        summary.report,
    ]


def task_splits(sizes: dict[str, dict[str, int]], unit: str = "tiles") -> str:
    """``tiles per task: train 16, val 16, test 16`` (``min-max`` where the tasks differ);
    ``windows per task`` on scene rows (random windows per epoch for training, when drawn)."""
    names = list(dict.fromkeys(split for task in sizes.values() for split in task))
    parts = []
    for split in names:
        values = [task.get(split, 0) for task in sizes.values()]
        low, high = min(values), max(values)
        parts.append(f"{split} {low}" if low == high else f"{split} {low}-{high}")
    return f"{unit} per task: " + ", ".join(parts)
