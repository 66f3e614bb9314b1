"""``landseg cv compare JOB_A JOB_B``: is job B better than job A, and what differs between them.

Read from each job folder's ``summary.json`` and ``job.json`` (nothing is recomputed from the
task folders). The main metric (default ``Average/IoU``, the mIoU) is compared per test subject
that both jobs have a result for: each subject's value is its mean over its rotations, the
difference is B - A, and its mean over the shared subjects gets a paired bootstrap interval
(:func:`landseg.jobs.summary.bootstrap_mean_ci` on the differences, same seed, resamples and
confidence as the summary's), flagged as not reliable below 5 shared subjects.

The settings that differ are the dotted keys of the two jobs' configs whose values differ,
less those a run's results do not depend on: the keys a continued run may change
(:mod:`landseg.config.continuation`: hardware except precision, display, logging, the tile
cache) but for the ones that shape the training (:data:`SHAPE_THE_TRAINING`: epochs,
early stopping, the validation cadence), and where the job writes its output
(:data:`NOT_COMPARED`). Data paths (``data_source.train_file``, ``cross_validation.file``)
are kept: other files may hold other rows.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from landseg.config.continuation import changeable, flatten
from landseg.core.errors import LandsegError
from landseg.jobs.folder import JobFolder
from landseg.jobs.plan import JOB_FILE, JOB_FORMAT
from landseg.jobs.summary import (
    MIOU,
    SUMMARY_JSON,
    bootstrap_mean_ci,
    bootstrap_record,
    format_table,
)

#: Config keys that never count as a difference: where the job writes (not what it computes).
NOT_COMPARED = (
    "output_setup.output_folder",
    "output_setup.name_exp_log",
    "output_setup.version_name",
    "output_setup.layout",
)


def _read_json(path: Path, folder: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise LandsegError(f"{folder}: {what}") from error
    except (OSError, json.JSONDecodeError) as error:
        raise LandsegError(f"{path}: not readable ({error})") from error
    if not isinstance(data, dict):
        raise LandsegError(f"{path}: not readable (not a JSON object)")
    return data


def load_job(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary.json, the config from job.json) of a job folder; LandsegError naming the
    folder when it is not a cross-validation job folder or has no summary yet."""
    if not folder.is_dir():
        raise LandsegError(f"{folder}: no such job folder")
    files = JobFolder(folder)
    job = _read_json(files.job_file, folder, f"not a cross-validation job folder (no {JOB_FILE})")
    if job.get("format") != JOB_FORMAT or not isinstance(job.get("config"), dict):
        raise LandsegError(
            f"{files.job_file}: job file format {job.get('format')}, expected {JOB_FORMAT}"
        )
    summary = _read_json(
        files.summary_json,
        folder,
        f"no {SUMMARY_JSON} yet (it is written when `landseg cv` ends; run it again)",
    )
    if not isinstance(summary.get("test_subjects"), dict):
        raise LandsegError(f"{files.summary_json}: no test_subjects: not a job summary")
    return summary, job["config"]


def subject_values(summary: dict[str, Any], metric: str) -> dict[str, float]:
    """Each test subject's mean of ``metric`` over its rotations (subjects without one left
    out), in the job's order."""
    values: dict[str, float] = {}
    for name, subject in summary["test_subjects"].items():
        stats = (subject.get("metrics") or {}).get(metric) or {}
        if stats.get("mean") is not None:
            values[name] = float(stats["mean"])
    return values


#: Keys a continued run may change (train longer, stop sooner) that the results depend on.
SHAPE_THE_TRAINING = (
    "train_setup.epochs",
    "train_setup.early_stopping.patience",
    "train_setup.early_stopping.min_delta",
    "train_setup.val_check_interval",
)


def _compared(config: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in flatten(config).items()
        if not changeable(key) or key in SHAPE_THE_TRAINING
    }


def differing_settings(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted config keys whose values differ between A and B (see the module docstring);
    a key missing from one config has ``None`` there."""
    flat_a, flat_b = _compared(a), _compared(b)
    return {
        key: (flat_a.get(key), flat_b.get(key))
        for key in sorted(flat_a.keys() | flat_b.keys())
        if key not in NOT_COMPARED and flat_a.get(key) != flat_b.get(key)
    }


def compare_jobs(folder_a: Path, folder_b: Path, metric: str = MIOU) -> dict[str, Any]:
    """The comparison of job B with job A on ``metric`` (the JSON of ``--json``)."""
    (summary_a, config_a), (summary_b, config_b) = load_job(folder_a), load_job(folder_b)
    values_a = subject_values(summary_a, metric)
    values_b = subject_values(summary_b, metric)
    for folder, summary, values in (
        (folder_a, summary_a, values_a),
        (folder_b, summary_b, values_b),
    ):
        if not values:
            known = sorted({k for s in summary["test_subjects"].values() for k in s["metrics"]})
            listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise LandsegError(
                f"{folder}: no test subject has a result for {metric!r}"
                + (f" (metrics: {listed})" if known else "")
            )
    shared = [name for name in values_a if name in values_b]
    if not shared:
        raise LandsegError(
            f"{folder_b}: no test subject in common with {folder_a} "
            f"(A: {', '.join(values_a)}; B: {', '.join(values_b)})"
        )
    per_subject = {
        name: {"a": values_a[name], "b": values_b[name], "diff": values_b[name] - values_a[name]}
        for name in shared
    }
    diffs = [row["diff"] for row in per_subject.values()]
    low, high = bootstrap_mean_ci(diffs)
    n = len(shared)
    return {
        "metric": metric,
        "a": str(folder_a),
        "b": str(folder_b),
        "complete": {"a": bool(summary_a.get("complete")), "b": bool(summary_b.get("complete"))},
        "shared_subjects": n,
        "per_subject": per_subject,
        "mean_a": statistics.fmean(row["a"] for row in per_subject.values()),
        "mean_b": statistics.fmean(row["b"] for row in per_subject.values()),
        "mean_diff": statistics.fmean(diffs),
        "ci_low": low,
        "ci_high": high,
        "bootstrap": bootstrap_record(n),
        "only_a": [name for name in values_a if name not in values_b],
        "only_b": [name for name in values_b if name not in values_a],
        "settings": {
            key: {"a": va, "b": vb}
            for key, (va, vb) in differing_settings(config_a, config_b).items()
        },
    }


def _value(value: Any) -> str:
    return json.dumps(value, default=str)


def comparison_text(result: dict[str, Any]) -> str:
    """The readable form of :func:`compare_jobs` (what ``landseg cv compare`` prints)."""
    metric, n, boot = result["metric"], result["shared_subjects"], result["bootstrap"]
    lines = [
        f"A: {result['a']}" + ("" if result["complete"]["a"] else " (incomplete: tasks missing)"),
        f"B: {result['b']}" + ("" if result["complete"]["b"] else " (incomplete: tasks missing)"),
        "",
        format_table(
            ["test subject", f"A {metric}", f"B {metric}", "B - A"],
            [
                [name, f"{row['a']:.4f}", f"{row['b']:.4f}", f"{row['diff']:+.4f}"]
                for name, row in result["per_subject"].items()
            ]
            + [
                [
                    "mean",
                    f"{result['mean_a']:.4f}",
                    f"{result['mean_b']:.4f}",
                    f"{result['mean_diff']:+.4f}",
                ]
            ],
        ).rstrip("\n"),
        "",
        f"{metric}, B - A: {result['mean_diff']:+.4f}, {boot['confidence']:.0%} interval "
        f"[{result['ci_low']:+.4f}, {result['ci_high']:+.4f}] (paired bootstrap over {n} shared "
        f"test subjects, {boot['resamples']} resamples, seed {boot['seed']}); the interval "
        + ("excludes 0" if result["ci_low"] > 0 or result["ci_high"] < 0 else "includes 0"),
    ]
    if not boot["reliable"]:
        lines.append(
            f"fewer than {boot['min_subjects']} shared test subjects: the interval is not reliable"
        )
    for side in ("a", "b"):
        only = result[f"only_{side}"]
        if only:
            lines.append(f"only in {side.upper()} (left out): {', '.join(only)}")
    settings = result["settings"]
    if settings:
        lines += [
            "",
            f"settings that differ ({len(settings)}):",
            format_table(
                ["setting", "A", "B"],
                [[key, _value(v["a"]), _value(v["b"])] for key, v in settings.items()],
            ).rstrip("\n"),
        ]
    else:
        lines += ["", "settings that differ: none that the results depend on"]
    return "\n".join(lines)
