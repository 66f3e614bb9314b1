"""The job summary: every test metric per task, and its mean and spread per test subject.

Written to the job folder as ``summary.json`` (everything), ``summary.md`` (readable tables),
``summary.png`` (mIoU per test subject) and ``summary_classes.png`` (per-class IoU per test
subject). Each task's metrics are its ``history_test.json`` entry: the best-``val_loss`` model
evaluated on the task's test groups. Per test subject, each metric's mean and standard
deviation are taken over its rotations (population standard deviation, 0 for a single
rotation; ``null`` values, such as a class absent from a zone, are left out and counted in
``n``). ``overall`` does the same over the test subjects' means, and adds the 95 % percentile
bootstrap interval of that mean (:func:`bootstrap_mean_ci`: test subjects resampled with
replacement, a fixed seed and number of resamples, recorded under ``bootstrap``).

The summary holds no time, host or absolute path, and its random draws are seeded, so a job
interrupted and resumed writes exactly the summary of an uninterrupted job.
"""

from __future__ import annotations

import json
import math
import socket
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landseg.core.files import atomic_path, atomic_write_json, atomic_write_text
from landseg.core.processes import pid_alive
from landseg.jobs.folder import JobFolder
from landseg.jobs.log import JobLog, JobSnapshot
from landseg.jobs.plan import Job
from landseg.runs.folder import RunFolder

# the job folder's names are JobFolder's
SUMMARY_JSON = JobFolder.SUMMARY_JSON
SUMMARY_MD = JobFolder.SUMMARY_MD
SUMMARY_PNG = JobFolder.SUMMARY_PNG
SUMMARY_CLASSES_PNG = JobFolder.SUMMARY_CLASSES_PNG
#: Keys of a history entry that are not metrics of the model.
NOT_METRICS = ("step", "learning rate", "checkpoint")
MIOU = "Average/IoU"
#: The headline columns of the readable tables, when present.
HEADLINE = ("Average/IoU", "Overall/Accuracy", "Average/F1-Score", "loss")
#: The bootstrap of the overall intervals: resamples, seed, confidence level. Fixed, so the
#: summary stays a pure function of the tasks' results.
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: Below this many test subjects (values), an interval is flagged as not reliable.
MIN_RELIABLE = 5
UNRELIABLE_NOTE = f"fewer than {MIN_RELIABLE} test subjects: the interval is not reliable"


# ---------------------------------------------------------------------------- bootstrap


def bootstrap_mean_cis(
    values: Any,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap intervals of the means of the columns of ``values`` (n × m).

    Draws ``resamples`` samples of ``n`` rows with replacement (``numpy.random.default_rng(
    seed).integers(0, n, size=(resamples, n))``), takes each column's mean over every sample,
    and returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those
    means per column (numpy's default, linear, quantiles) as two arrays of length m. Every
    column uses the same draws, which depend only on ``n``, ``resamples`` and ``seed``: a
    column's interval is exactly the one :func:`bootstrap_mean_ci` gives for it alone. A
    constant column (one row included) gets the degenerate interval ``(value, value)``.
    Memory: a few ``resamples × n`` arrays.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"bootstrap: needs a non-empty n × m array, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("bootstrap: values must be finite (leave missing values out)")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(
            f"bootstrap: resamples must be >= 1 and confidence in (0, 1), got {resamples} "
            f"and {confidence}"
        )
    n = data.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    tail = (1.0 - confidence) / 2.0
    # column by column (numpy's pairwise sums, no BLAS): a column's result never depends on
    # the other columns, the machine's BLAS or its threads
    bounds = np.array(
        [np.quantile(column[draws].mean(axis=1), [tail, 1.0 - tail]) for column in data.T]
    ).reshape(-1, 2)
    low, high = bounds[:, 0], bounds[:, 1]
    constant = (data == data[0]).all(axis=0)
    return np.where(constant, data[0], low), np.where(constant, data[0], high)


def bootstrap_mean_ci(
    values: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """The ``confidence`` percentile-bootstrap interval ``(low, high)`` of the mean of ``values``.

    ``values`` are finite numbers, one per independent unit (a test subject's mean; for a
    paired comparison, each unit's difference). Resampled with replacement ``resamples``
    times with ``numpy.random.default_rng(seed)``, so the same values give the same interval.
    One value, or equal values, give ``(value, value)``; an interval from fewer than
    :data:`MIN_RELIABLE` values is not reliable. Raises ValueError for no values.
    """
    low, high = bootstrap_mean_cis(
        np.asarray(values, dtype=np.float64).reshape(-1, 1),
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )
    return float(low[0]), float(high[0])


def bootstrap_record(n: int) -> dict[str, Any]:
    """How the intervals were drawn, for ``n`` test subjects (``summary.json["bootstrap"]``)."""
    return {
        "resamples": BOOTSTRAP_RESAMPLES,
        "seed": BOOTSTRAP_SEED,
        "confidence": CONFIDENCE,
        "subjects": n,
        "min_subjects": MIN_RELIABLE,
        "reliable": n >= MIN_RELIABLE,
    }


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


def overall_stats(means: list[dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """:func:`aggregate` over the test subjects' means, plus each metric's bootstrap interval
    of the mean (``ci_low``, ``ci_high``; ``None`` without values).

    Metrics with values for the same test subjects are bootstrapped together (same draws);
    each interval is exactly the one :func:`bootstrap_mean_ci` gives for the metric's values,
    in test-subject order.
    """
    stats = aggregate(means)
    columns: dict[tuple[int, ...], list[tuple[str, list[float]]]] = {}
    for key, entry in stats.items():
        entry.update(ci_low=None, ci_high=None)
        found = {
            i: float(v)
            for i, sample in enumerate(means)
            if (v := sample.get(key)) is not None and math.isfinite(float(v))
        }
        if found:
            columns.setdefault(tuple(found), []).append((key, list(found.values())))
    for items in columns.values():
        lows, highs = bootstrap_mean_cis(np.array([values for _, values in items]).T)
        for (key, _), low, high in zip(items, lows.tolist(), highs.tolist(), strict=True):
            stats[key].update(ci_low=low, ci_high=high)
    return stats


def build_summary(job: Job, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary of ``job`` from its task folders and its job log rows (by task id)."""
    tasks: dict[str, dict[str, Any]] = {}
    missing: list[dict[str, Any]] = []
    for task in job.plan.tasks:
        row = rows.get(task.id, {})
        status = row.get("status", "pending")
        metrics = task_test_metrics(job.task_dir(task)) if status == "finished" else None
        if metrics is None:
            error = row.get("error")
            if status == "finished":  # trained and tested, but its results cannot be read
                error = (
                    f"its test results {RunFolder(job.task_dir(task)).test_history} are missing "
                    "or unreadable: restore the file, or move the task's folder away and run "
                    "the job again to train it again"
                )
            missing.append({"task": task.id, "status": status, "error": error})
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
        "bootstrap": bootstrap_record(len(means)),
        "overall": overall_stats(means),
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


def _unreliable(stats: dict[str, Any] | None) -> bool:
    return bool(stats and stats.get("ci_low") is not None and stats["n"] < MIN_RELIABLE)


def _interval(stats: dict[str, Any] | None) -> str:
    """``[low, high]`` of an overall metric, marked ``†`` when from too few test subjects."""
    if not stats or stats.get("ci_low") is None:
        return ""
    mark = " †" if _unreliable(stats) else ""
    return f"[{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]{mark}"


def _overall_cell(stats: dict[str, Any] | None) -> str:
    text = _mean_std(stats)
    interval = _interval(stats)
    return f"{text} {interval}" if interval else text


def class_iou_keys(summary: dict[str, Any]) -> list[str]:
    """The per-class IoU keys (``<class label>/IoU``) of the summary, in the metrics' order."""
    keys = dict.fromkeys(key for s in summary["test_subjects"].values() for key in s["metrics"])
    return [
        key
        for key in keys
        if key.endswith("/IoU") and key.rsplit("/", 1)[0] not in ("Average", "Overall")
    ]


def _bootstrap_notes(summary: dict[str, Any], columns: list[str]) -> list[str]:
    boot = summary.get("bootstrap") or {}
    if not boot.get("subjects"):
        return []
    notes = [
        f"overall: mean ± standard deviation over the test subjects' means ({boot['subjects']} "
        f"test subject{'s' if boot['subjects'] != 1 else ''}), and in brackets the "
        f"{boot['confidence']:.0%} bootstrap interval of that mean "
        f"({boot['resamples']} resamples of the test subjects, seed {boot['seed']})."
    ]
    if any(_unreliable(summary["overall"].get(key)) for key in columns):
        notes.append(f"† {UNRELIABLE_NOTE}.")
    return notes


def _class_table(summary: dict[str, Any]) -> list[str]:
    keys = class_iou_keys(summary)
    if not keys:
        return []
    labels = [key.rsplit("/", 1)[0] for key in keys]
    extra = [MIOU] if any(MIOU in s["metrics"] for s in summary["test_subjects"].values()) else []
    columns = keys + extra
    rows = [
        [name, *(_number((s["metrics"].get(key) or {}).get("mean")) for key in columns)]
        for name, s in summary["test_subjects"].items()
    ]
    overall = []
    for key in columns:
        stats = summary["overall"].get(key)
        mean = _number(stats["mean"] if stats else None)
        interval = _interval(stats)
        overall.append(f"{mean} {interval}" if interval else mean)
    notes = [
        "IoU of each class on each test subject (mean over its rotations; `-`: the class is "
        "absent from the subject's tiles and never predicted there); overall: mean over the "
        "test subjects and its bootstrap interval. Figure: summary_classes.png.\n"
    ]
    if any(_unreliable(summary["overall"].get(key)) for key in columns):
        notes.append(f"† {UNRELIABLE_NOTE}.\n")
    return [
        "## Per-class IoU per test subject\n",
        *notes,
        format_table(
            ["test subject", *labels, *(["mIoU"] if extra else [])],
            [*rows, ["overall", *overall]],
        ),
    ]


def summary_markdown(summary: dict[str, Any], title: str) -> str:
    columns = _headline(summary)
    state = (
        "complete"
        if summary["complete"]
        else f"{len(summary['missing'])} of {summary['tasks_total']} tasks missing"
    )
    notes = _bootstrap_notes(summary, columns)
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
            + [["overall", "", *(_overall_cell(summary["overall"].get(key)) for key in columns)]],
        ),
        *(note + "\n" for note in notes),
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
        *_class_table(summary),
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
    """Bars: mean mIoU per test subject with its standard deviation; dots: each rotation;
    dashed line and band: the mean over test subjects and its bootstrap interval."""
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
        if overall.get("ci_low") is not None:
            unreliable = " (not reliable)" if _unreliable(overall) else ""
            ax.axhspan(
                overall["ci_low"],
                overall["ci_high"],
                color="tab:red",
                alpha=0.15,
                label=f"{summary['bootstrap']['confidence']:.0%} interval{unreliable}",
            )
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test mIoU")
    ax.set_xlabel("test subject")
    ax.set_title(title)
    return fig


def class_figure(summary: dict[str, Any], title: str) -> Any:
    """Heat map of per-class IoU (columns) per test subject (rows, then their mean)."""
    import matplotlib

    from landseg.loggers.figures import new_figure

    keys = class_iou_keys(summary)
    names = list(summary["test_subjects"])
    fig = new_figure(max(4.0, 0.9 * len(keys) + 2.5), max(2.5, 0.45 * (len(names) + 1) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    if not keys or not names:
        ax.text(0.5, 0.5, "no per-class IoU yet", ha="center", va="center")
        ax.set_axis_off()
        return fig

    def value(stats: dict[str, Any] | None) -> float:
        return math.nan if not stats or stats["mean"] is None else float(stats["mean"])

    grid = np.array(
        [[value(summary["test_subjects"][n]["metrics"].get(k)) for k in keys] for n in names]
        + [[value(summary["overall"].get(k)) for k in keys]]
    )
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for (row, col), cell in np.ndenumerate(grid):
        text = "n/a" if math.isnan(cell) else f"{cell:.2f}"
        colour = "black" if math.isnan(cell) or cell > 0.6 else "white"
        ax.text(col, row, text, ha="center", va="center", fontsize=8, color=colour)
    ax.axhline(len(names) - 0.5, color="white", linewidth=2)
    ax.set_xticks(range(len(keys)), [k.rsplit("/", 1)[0] for k in keys], rotation=30)
    ax.set_yticks(range(len(names) + 1), [*names, "mean"])
    ax.set_xlabel("class")
    ax.set_ylabel("test subject")
    fig.colorbar(image, ax=ax, label="test IoU")
    return fig


def write_summary(job: Job, log_db: JobLog) -> dict[str, Any]:
    """Write summary.json, summary.md, summary.png and summary_classes.png; return the
    summary."""
    summary = build_summary(job, {row["task_id"]: row for row in log_db.tasks()})
    title = job.folder.name
    files = job.files
    atomic_write_json(files.summary_json, summary)
    atomic_write_text(files.summary_md, summary_markdown(summary, title))
    fig = summary_figure(summary, f"{title}: mIoU per test subject")
    with atomic_path(files.summary_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    fig = class_figure(summary, f"{title}: IoU per class and test subject")
    with atomic_path(files.summary_classes_png) as tmp:
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
