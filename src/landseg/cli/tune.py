"""``landseg tune -c CONFIG [--workers N]``: run or continue a search (see tuning.md).

Registered into ``landseg``'s parser by :mod:`landseg.cli.main`; Optuna, torch and Lightning are
imported inside the handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from landseg.config.overrides import add_overrides_argument
from landseg.core.errors import LandsegError


def cmd_tune(args: argparse.Namespace) -> int:
    from landseg.jobs.runner import ddp_rank_task, run_ddp_rank

    task_dir = ddp_rank_task()
    if task_dir is not None:  # an extra DDP process of one task of a trial
        run_ddp_rank(task_dir)
        return 0
    if args.workers < 1:
        raise LandsegError(f"--workers: must be at least 1, got {args.workers}")
    try:
        import optuna  # noqa: F401
    except ImportError as error:
        raise LandsegError(
            "landseg tune needs Optuna: install landseg's tune extra, pip install "
            "'landseg[tune]' (make installs it)"
        ) from error
    from landseg.jobs.mpi import launched_by_mpi
    from landseg.tuning.results import results_markdown, write_results
    from landseg.tuning.search import plan_tune, run_search

    if launched_by_mpi():
        if args.workers != 1:
            raise LandsegError("--workers: not used under mpiexec, where the ranks are the workers")
        from landseg.jobs.mpi import run_mpi_jobs

        with run_mpi_jobs() as run_job:
            if run_job is None:  # a worker rank: it served every trial's tasks
                return 0
            tuning = plan_tune(args.config, args.overrides).tuning  # as validate plans it
            study = run_search(tuning, lambda job, rows: run_job(job, rows, args.retry_failed))
    else:
        from landseg.jobs.runner import run_job as run_local

        tuning = plan_tune(args.config, args.overrides).tuning  # as validate plans it
        study = run_search(
            tuning,
            lambda job, rows: run_local(
                job,
                rows,
                workers=args.workers,
                retry_failed=args.retry_failed,
            ),
        )
    results = write_results(tuning, study)
    text = results_markdown(results, tuning.folder.name)
    print(text.split("## Trials")[0].rstrip())
    print(f"\ntune folder: {tuning.folder}\nsummary: {tuning.files.summary_md}")
    failed = [t["number"] for t in results["trials"] if t["state"] != "COMPLETE"]
    if failed:
        print(f"trials without a result: {', '.join(map(str, failed))}")
    return 0


def register(add: Callable[..., Any]) -> None:
    """Add this package's subcommand with ``add(name, handler, help_text)``."""
    tune = add(
        "tune",
        cmd_tune,
        "search settings inside cross-validation (each trial is a cv job; Optuna)",
    )
    tune.add_argument(
        "-c", "--config", type=Path, required=True, help="config with cross_validation and search"
    )
    add_overrides_argument(tune)
    tune.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tasks of a trial run at once on this machine, as in landseg cv; under mpiexec "
        "the ranks are the workers",
    )
    tune.add_argument(
        "--retry-failed", action="store_true", help="run the failed tasks of a trial again"
    )
