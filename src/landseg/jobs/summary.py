"""The job summary: every test metric per task, and its mean and spread per test subject.

Written to the job folder as ``summary.json`` (everything), ``summary.md`` (readable tables)
and ``summary.png`` (mIoU per test subject). Each task's metrics are its ``history_test.json``
entry: the best-``val_loss`` model evaluated on the task's test groups. Per test subject, each
metric's mean and standard deviation are taken over its rotations (population standard
deviation, 0 for a single rotation; ``null`` values, such as a class absent from a zone, are
left out and counted in ``n``). ``overall`` does the same over the test subjects' means.

The summary holds no time, host or absolute path, so a job interrupted and resumed writes
exactly the summary of an uninterrupted job.
"""

from __future__ import annotations

import json
import math
import socket
import statistics
from pathlib import Path
from typing import Any

from landseg.io import atomic_path, atomic_write_json, atomic_write_text
from landseg.jobs.plan import Job
from landseg.jobs.progress import JobLog, JobSnapshot
from landseg.processes import pid_alive
from landseg.runs.folder import RunFolder

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
#: Keys of a history entry that are not metrics of the model.
NOT_METRICS = ("step", "learning rate", "checkpoint")
MIOU = "Average/IoU"
#: The headline columns of the readable tables, when present.
HEADLINE = ("Average/IoU", "Overall/Accuracy", "Average/F1-Score", "loss")


def task_test_metrics(run_dir: Path) -> dict[str, float | None] | None:
    """The scalar metrics of a task's test entry (None when the task has none)."""
    try:
        entries = json.loads(RunFolder(run_dir).test_history.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not entries:
        return None
    entry = entries[max(entries, key=int)]
    return {
        key: value
        for key, value in entry.items()
        if key not in NOT_METRICS
        and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)))
    }


def aggregate(samples: list[dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation and count of every metric over ``samples`` (nulls left out)."""
    keys = list(dict.fromkeys(key for sample in samples for key in sample))
    result: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = [
            float(v)
            for sample in samples
            if (v := sample.get(key)) is not None and math.isfinite(float(v))
        ]
        result[key] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.pstdev(values) if values else None,
            "n": len(values),
        }
    return result


def build_summary(job: Job, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary of ``job`` from its task folders and its job log rows (by task id)."""
    tasks: dict[str, dict[str, Any]] = {}
    missing: list[dict[str, Any]] = []
    for task in job.plan.tasks:
        row = rows.get(task.id, {})
        status = row.get("status", "pending")
        metrics = task_test_metrics(job.task_dir(task)) if status == "finished" else None
        if metrics is None:
            missing.append({"task": task.id, "status": status, "error": row.get("error")})
        tasks[task.id] = {
            "subject": task.subject,
            "rotation": task.rotation,
            "test": list(task.test),
            "val": list(task.val),
            "train": list(task.train),
            "status": status,
            "metrics": metrics,
        }
    subjects: dict[str, dict[str, Any]] = {}
    for subject, groups in job.plan.subjects.items():
        members = [t for t in tasks.values() if t["subject"] == subject]
        found = [t["metrics"] for t in members if t["metrics"] is not None]
        subjects[subject] = {
            "groups": list(groups),
            "rotations": len(members),
            "finished": len(found),
            "metrics": aggregate(found),
        }
    means = [
        {key: value["mean"] for key, value in s["metrics"].items()}
        for s in subjects.values()
        if s["finished"]
    ]
    return {
        "groups": list(job.plan.groups),
        "validation": job.config.cross_validation.validation
        if job.config.cross_validation
        else None,
        "complete": not missing,
        "tasks_total": len(tasks),
        "tasks_finished": len(tasks) - len(missing),
        "missing": missing,
        "overall": aggregate(means),
        "test_subjects": subjects,
        "tasks": tasks,
    }


# ---------------------------------------------------------------------------- readable forms


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, padded so it also reads well as plain text in a terminal."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _mean_std(stats: dict[str, Any] | None) -> str:
    if not stats or stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def _headline(summary: dict[str, Any]) -> list[str]:
    present = {key for s in summary["test_subjects"].values() for key in s["metrics"]}
    return [key for key in HEADLINE if key in present]


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    columns = _headline(summary)
    state = (
        "complete"
        if summary["complete"]
        else f"{len(summary['missing'])} of {summary['tasks_total']} tasks missing"
    )
    parts = [
        f"# Cross-validation: {title}\n",
        f"{summary['tasks_finished']} of {summary['tasks_total']} tasks finished ({state}). "
        f"Groups: {', '.join(summary['groups'])}. Mean ± standard deviation over rotations; "
        "every metric is in summary.json.\n",
        "## Per test subject\n",
        format_table(
            ["test subject", "rotations", *columns],
            [
                [name, f"{s['finished']}/{s['rotations']}"]
                + [_mean_std(s["metrics"].get(key)) for key in columns]
                for name, s in summary["test_subjects"].items()
            ]
            + [["overall", "", *(_mean_std(summary["overall"].get(key)) for key in columns)]],
        ),
        "## Per task\n",
        format_table(
            ["task", "status", "validation", *columns],
            [
                [
                    task_id,
                    t["status"],
                    "+".join(t["val"]) or "share",
                    *((_number((t["metrics"] or {}).get(key))) for key in columns),
                ]
                for task_id, t in summary["tasks"].items()
            ],
        ),
    ]
    if summary["missing"]:
        parts += ["## Missing tasks\n"]
        parts += [
            f"- {m['task']}: {m['status']}"
            + (f" ({m['error'].splitlines()[0]})" if m["error"] else "")
            for m in summary["missing"]
        ]
        parts[-1] += "\n"
    return "\n".join(parts)


def summary_figure(summary: dict[str, Any], title: str) -> Any:
    """Bars: mean mIoU per test subject with its standard deviation; dots: each rotation."""
    from landseg.loggers.figures import new_figure

    names = list(summary["test_subjects"])
    fig = new_figure(max(4.0, 0.8 * len(names) + 2.0), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    means, stds = [], []
    for i, name in enumerate(names):
        stats = summary["test_subjects"][name]["metrics"].get(MIOU)
        means.append(stats["mean"] if stats and stats["mean"] is not None else 0.0)
        stds.append(stats["std"] if stats and stats["std"] is not None else 0.0)
        points = [
            t["metrics"][MIOU]
            for t in summary["tasks"].values()
            if t["subject"] == name and t["metrics"] and t["metrics"].get(MIOU) is not None
        ]
        ax.scatter([i] * len(points), points, color="black", s=12, zorder=3)
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.7)
    overall = summary["overall"].get(MIOU)
    if overall and overall["mean"] is not None:
        ax.axhline(overall["mean"], color="tab:red", linestyle="--", label="mean over subjects")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test mIoU")
    ax.set_xlabel("test subject")
    ax.set_title(title)
    return fig


def write_summary(job: Job, log_db: JobLog) -> dict[str, Any]:
    """Write summary.json, summary.md and summary.png; return the summary."""
    summary = build_summary(job, {row["task_id"]: row for row in log_db.tasks()})
    title = job.folder.name
    atomic_write_json(job.folder / SUMMARY_JSON, summary)
    atomic_write_text(job.folder / SUMMARY_MD, summary_markdown(summary, title))
    fig = summary_figure(summary, f"{title}: mIoU per test subject")
    with atomic_path(job.folder / SUMMARY_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return summary


def status_report(log_db: JobLog | JobSnapshot) -> str:
    """``landseg cv status``: done, running (by whom, since when), pending and failed tasks.

    From the job log on the host that runs the job, or from its snapshot elsewhere.
    """
    tasks = log_db.tasks()
    counts = log_db.counts()
    lines = [
        f"job {log_db.path.parent}: "
        + ", ".join(f"{counts[s]} {s}" for s in ("finished", "running", "pending", "failed"))
        + f" of {len(tasks)} tasks"
    ]
    waiting = [s for s in log_db.subjects() if not s["finished"]]
    if waiting:
        lines.append(
            "test subjects still to train: "
            + ", ".join(
                f"{s['subject']} (rotation {s['current_rotation'] or 0}/{s['rotations']})"
                for s in waiting
            )
        )
    here = socket.gethostname()
    rows = []
    for task in tasks:
        note = (task["error"] or "").splitlines()[0][:80] if task["error"] else ""
        running = task["status"] == "running"
        if running and task["host"] == here and not pid_alive(task["pid"], task["pid_start"]):
            note = "worker is gone: re-run the job to resume this task"
        best = (task["best"] or {}).get("val_miou")
        rows.append(
            [
                task["task_id"],
                task["status"],
                task["worker"] or "",
                f"{task['host']}:{task['pid']}" if running else "",
                task["started"] or "",
                "" if running else task["ended"] or "",
                _number(best) if best is not None else "",
                str(task["attempts"]),
                note,
            ]
        )
    headers = ["task", "status", "worker", "host:pid", "started", "ended", "best val_miou"]
    lines.append(format_table([*headers, "attempts", "note"], rows))
    return "\n".join(lines)
