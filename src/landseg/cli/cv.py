"""Subcommands of this package, registered into ``landseg``'s parser (see landseg.cli.main).

``landseg cv -c CONFIG [--workers N]`` runs or resumes a cross-validation job;
``landseg cv status (-c CONFIG | JOB_FOLDER)`` shows its job log;
``landseg cv compare JOB_A JOB_B [--metric M] [--json]`` compares two jobs' summaries. Heavy
modules (torch, Lightning, mpi4py) are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from landseg.config.overrides import add_overrides_argument
from landseg.core.errors import LandsegError


def _cv_status(args: argparse.Namespace) -> int:
    from landseg.jobs.folder import JobFolder
    from landseg.jobs.log import JobLog, JobSnapshot
    from landseg.jobs.plan import cv_section, job_folder
    from landseg.jobs.summary import status_report

    config_path = args.status_config or args.config
    if args.job is not None:
        folder = args.job
        _check_job_folder(folder, JobFolder.LOG_FILE)
    elif config_path is not None:
        from landseg.config.load import load_config  # the folder only: no registry or data

        config = load_config(config_path, args.overrides)
        cv_section(config, config_path)
        folder = job_folder(config)
    else:
        raise LandsegError("cv status: give the job folder or -c CONFIG")
    snapshot = JobFolder(folder).snapshot
    if snapshot.is_file():
        held = JobSnapshot(snapshot)
        if held.data["host"] != socket.gethostname():  # never open another host's SQLite
            print(
                f"snapshot written by {held.data['host']} at {held.data['written']} "
                "(the job log is read only on the host that runs the job)"
            )
            print(status_report(held))
            return 0
    with JobLog(JobFolder(folder).log, create=False) as log_db:
        print(status_report(log_db))
    return 0


def _check_job_folder(folder: Path, log_file: str) -> None:
    """A job folder given on the command line that is none: say what it is instead."""
    if folder.is_file():
        raise LandsegError(
            f"{folder}: is a file, not a job folder; for a config, use cv status -c {folder}"
        )
    if not folder.is_dir():
        raise LandsegError(f"{folder}: no such job folder")
    if (folder / log_file).is_file():
        return
    jobs = sorted(str(log.parent) for log in folder.glob(f"*/{log_file}"))
    if jobs:
        raise LandsegError(
            f"{folder}: not a job folder; the jobs in it: {', '.join(jobs[:10])}"
            + (f" and {len(jobs) - 10} more" if len(jobs) > 10 else "")
        )


def _cv_compare(args: argparse.Namespace) -> int:
    from landseg.jobs.compare import compare_jobs, comparison_text

    result = compare_jobs(args.job_a, args.job_b, args.compare_metric)
    print(json.dumps(result, indent=2) if args.as_json else comparison_text(result))
    return 0


def _report(summary: dict[str, Any], folder: Path) -> None:
    from landseg.jobs.folder import JobFolder
    from landseg.jobs.summary import summary_markdown

    text = summary_markdown(summary, folder.name)
    print(text.split("## Per task")[0].rstrip())
    print(f"\njob folder: {folder}\nsummary: {JobFolder(folder).summary_md}")
    if not summary["complete"]:
        for missing in summary["missing"]:
            if missing["status"] == "finished":
                print(f"task {missing['task']}: {missing['error']}")
        print(
            f"{len(summary['missing'])} tasks missing; re-run the same command to resume "
            "(add --retry-failed to run failed tasks again)"
        )


def cmd_cv(args: argparse.Namespace) -> int:
    if args.cv_command == "status":
        return _cv_status(args)
    if args.cv_command == "compare":
        return _cv_compare(args)
    from landseg.jobs.runner import ddp_rank_task, run_ddp_rank

    task_dir = ddp_rank_task()
    if task_dir is not None:  # an extra DDP process of one task, started by Lightning
        run_ddp_rank(task_dir)
        return 0
    if args.config is None:
        raise LandsegError("cv: -c CONFIG is required (or: landseg cv status)")
    if args.workers < 1:
        raise LandsegError(f"--workers: must be at least 1, got {args.workers}")
    from landseg.jobs.mpi import launched_by_mpi

    if launched_by_mpi():
        if args.workers != 1:
            raise LandsegError("--workers: not used under mpiexec, where the ranks are the workers")
        from landseg.jobs.mpi import run_mpi

        result = run_mpi(args.config, args.overrides, retry_failed=args.retry_failed)
        if result is None:  # a worker rank: rank 0 reports
            return 0
        folder, summary = result
    else:
        from landseg.jobs.cv_plan import plan_cv
        from landseg.jobs.runner import run_job

        plan = plan_cv(args.config, args.overrides)  # what landseg validate prints
        folder, summary = (
            plan.job.folder,
            run_job(
                plan.job,
                plan.rows,
                workers=args.workers,
                retry_failed=args.retry_failed,
            ),
        )
    _report(summary, folder)
    return 0 if summary["complete"] else 1


def register(add: Callable[..., Any]) -> None:
    """Add this package's subcommands with ``add(name, handler, help_text)``."""
    cv = add(
        "cv",
        cmd_cv,
        "run or resume a group-wise cross-validation job (e.g. leave one zone out)",
    )
    cv.add_argument("-c", "--config", type=Path, help="JSON or YAML config with cross_validation")
    add_overrides_argument(cv)
    cv.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tasks run at once on this machine, each in its own process (one GPU each when "
        "there are GPUs); default 1. Under mpiexec the ranks are the workers",
    )
    cv.add_argument(
        "--retry-failed", action="store_true", help="run the tasks that failed earlier again"
    )
    sub = cv.add_subparsers(dest="cv_command", metavar="{status,compare}")
    status = sub.add_parser(
        "status", help="show the job log: done, running (by whom, since when), pending, failed"
    )
    status.add_argument("job", nargs="?", type=Path, help="the job folder")
    status.add_argument(
        "-c", "--config", dest="status_config", metavar="CONFIG", type=Path, help="its config"
    )
    compare = sub.add_parser(
        "compare",
        help="B - A on the main metric over the test subjects both jobs share (with its "
        "interval), and the settings that differ",
    )
    compare.add_argument("job_a", type=Path, help="job folder A (the reference)")
    compare.add_argument("job_b", type=Path, help="job folder B")
    compare.add_argument(
        "--metric",
        dest="compare_metric",
        default="Average/IoU",
        help="the metric compared (a key of summary.json; default Average/IoU, the mIoU)",
    )
    compare.add_argument(
        "--json", dest="as_json", action="store_true", help="print the comparison as JSON"
    )
