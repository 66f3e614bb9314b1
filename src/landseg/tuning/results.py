"""What a search found, in the tune folder: the honest (nested) result and the optimistic best.

* ``summary.json`` / ``summary.md``: every trial (its values, objective, state), and for each
  test subject the trial chosen on that subject's own rotations (validation scores only) with
  its test score on the subject: the mean of those test scores, with its bootstrap interval,
  is the search's result. A reviewer can trust it: no test score chose anything.
* ``best_config.yaml``: the single best trial, chosen on every rotation at once, as a plain
  config. Its cross-validation score is optimistic: every test subject was some task's
  validation group while it was chosen.
* ``trials.csv``: one row per trial; ``importance.png``: Optuna's PED-ANOVA importances.

Everything here is a pure function of the study and the trial folders, so a search killed and
continued writes the results of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import yaml

from landseg.core.files import atomic_path, atomic_write_json, atomic_write_text
from landseg.jobs.folder import JobFolder
from landseg.jobs.plan import Job
from landseg.jobs.summary import (
    MIOU,
    UNRELIABLE_NOTE,
    bootstrap_mean_ci,
    bootstrap_record,
    format_table,
)
from landseg.tuning.search import Tuning, task_validation_score

# the search folder's names are JobFolder's
SUMMARY_MD = JobFolder.SUMMARY_MD
IMPORTANCE_PNG = JobFolder.IMPORTANCE_PNG
BEST_CONFIG = JobFolder.BEST_CONFIG


def _subject_scores(job: Job, objective: str) -> dict[str, dict[str, float | None]]:
    """Per test subject of a trial's job: the mean validation score over its rotations and
    the test mIoU (the job summary's mean over rotations)."""
    try:
        summary = json.loads(job.files.summary_json.read_text())
    except (OSError, json.JSONDecodeError):
        summary = {"test_subjects": {}}
    scores: dict[str, dict[str, float | None]] = {}
    for subject in job.plan.subjects:
        values = [
            task_validation_score(job.task_dir(task), objective)
            for task in job.plan.tasks
            if task.subject == subject
        ]
        found = [v for v in values if v is not None]
        val = statistics.fmean(found) if found and len(found) == len(values) else None
        stats = summary["test_subjects"].get(subject, {}).get("metrics", {}).get(MIOU) or {}
        scores[subject] = {"val": val, "test": stats.get("mean")}
    return scores


def _trial_rows(tuning: Tuning, study: Any) -> list[dict[str, Any]]:
    rows = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        folder = tuning.trial_folder(trial.number)
        job = Job.load(folder) if JobFolder(folder).job_file.is_file() else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "params": dict(trial.params),
                "value": trial.value,
                "job": str(folder.relative_to(tuning.folder)),
                "subjects": _subject_scores(job, tuning.search.objective) if job else {},
            }
        )
    return rows


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def nested_selection(trials: list[dict[str, Any]], maximize: bool) -> dict[str, dict[str, Any]]:
    """For each test subject: the complete trial with the best validation score on that
    subject's rotations (ties: the lower trial number), and its test mIoU there."""
    chosen: dict[str, dict[str, Any]] = {}
    for trial in trials:
        if trial["state"] != "COMPLETE":
            continue
        for subject, score in trial["subjects"].items():
            val = score["val"]
            if val is None:
                continue
            held = chosen.get(subject)
            if held is None or _better(val, held["val"], maximize):
                chosen[subject] = {"trial": trial["number"], "val": val, "test": score["test"]}
    return chosen


def best_trial(trials: list[dict[str, Any]], maximize: bool) -> dict[str, Any] | None:
    best = None
    for trial in trials:
        complete = trial["state"] == "COMPLETE" and trial["value"] is not None
        if complete and (best is None or _better(trial["value"], best["value"], maximize)):
            best = trial
    return best


def importances(study: Any) -> tuple[dict[str, float], str | None]:
    """PED-ANOVA importances (fANOVA would need scikit-learn), or why there are none."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"{len(complete)} complete trial(s): importances need at least 2"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return {}, f"not computed: {error}"
    return {key: float(value) for key, value in found.items()}, None


def build_results(tuning: Tuning, study: Any) -> dict[str, Any]:
    maximize = tuning.search.direction() == "maximize"
    trials = _trial_rows(tuning, study)
    chosen = nested_selection(trials, maximize)
    tests = [c["test"] for c in chosen.values() if c["test"] is not None]
    low, high = bootstrap_mean_ci(tests) if tests else (None, None)
    best = best_trial(trials, maximize)
    found, why_not = importances(study)
    return {
        "objective": tuning.search.objective,
        "direction": tuning.search.direction(),
        "trials_wanted": tuning.search.trials,
        "trials": trials,
        "nested": {
            "subjects": chosen,
            "test_miou": {
                "mean": statistics.fmean(tests) if tests else None,
                "std": statistics.pstdev(tests) if tests else None,
                "ci_low": low,
                "ci_high": high,
                "n": len(tests),
            },
            "bootstrap": bootstrap_record(len(tests)),
        },
        "best": None
        if best is None
        else {"trial": best["number"], "value": best["value"], "params": best["params"]},
        "importance": found,
        "importance_note": why_not,
    }


# ---------------------------------------------------------------------------- files


def _number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_csv(results: dict[str, Any]) -> str:
    keys = list(dict.fromkeys(k for t in results["trials"] for k in t["params"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", *keys, results["objective"], "job"])
    for t in results["trials"]:
        value = "" if t["value"] is None else repr(t["value"])
        writer.writerow(
            [t["number"], t["state"], *(t["params"].get(k, "") for k in keys), value, t["job"]]
        )
    return buffer.getvalue()


def results_markdown(results: dict[str, Any], title: str) -> str:
    keys = list(dict.fromkeys(k for t in results["trials"] for k in t["params"]))
    nested = results["nested"]
    stats = nested["test_miou"]
    interval = (
        f"[{_number(stats['ci_low'])}, {_number(stats['ci_high'])}]"
        if stats["ci_low"] is not None
        else "-"
    )
    parts = [
        f"# Search: {title}\n",
        f"{len(results['trials'])} of {results['trials_wanted']} trials; objective "
        f"{results['objective']} ({results['direction']}d), the mean over a trial's tasks of "
        "the validation score at each task's best-val_loss checkpoint.\n",
        "## Result (nested: each test subject's trial chosen on its own rotations)\n",
        f"Test mIoU: **{_number(stats['mean'])}** ± {_number(stats['std'])} over "
        f"{stats['n']} test subjects, 95 % bootstrap interval {interval}."
        + ("" if nested["bootstrap"]["reliable"] else f" {UNRELIABLE_NOTE.capitalize()}.")
        + "\n",
        format_table(
            ["test subject", "chosen trial", f"its {results['objective']} there", "test mIoU"],
            [
                [subject, str(c["trial"]), _number(c["val"]), _number(c["test"])]
                for subject, c in nested["subjects"].items()
            ],
        ),
        "## Best configuration (optimistic)\n",
    ]
    best = results["best"]
    if best is None:
        parts.append("No trial is complete yet.\n")
    else:
        values = ", ".join(f"{k} = {_value_text(v)}" for k, v in best["params"].items())
        parts.append(
            f"Trial {best['trial']} ({values}), {results['objective']} "
            f"{_number(best['value'])}, written to {BEST_CONFIG}. Chosen on every rotation at "
            "once: its cross-validation score is optimistic, since every test subject was "
            "some task's validation group while it was chosen.\n"
        )
    parts += [
        "## Trials\n",
        format_table(
            ["trial", "state", *keys, results["objective"]],
            [
                [
                    str(t["number"]),
                    t["state"],
                    *(_value_text(t["params"].get(k, "")) for k in keys),
                    _number(t["value"]),
                ]
                for t in results["trials"]
            ],
        ),
        "## Importance (PED-ANOVA)\n",
        f"![importance of each setting]({IMPORTANCE_PNG})\n",
    ]
    if results["importance"]:
        parts.append(
            format_table(
                ["setting", "importance"],
                [[k, f"{v:.3f}"] for k, v in results["importance"].items()],
            )
        )
    else:
        parts.append(f"{results['importance_note']}\n")
    return "\n".join(parts)


#: Appended to the search's name for the job folder of ``best_config.yaml``.
BEST_JOB_SUFFIX = "-best"


def best_config_text(tuning: Tuning, params: dict[str, Any], trial: int) -> str:
    """The base config with the best trial's values, as plain YAML (paths absolute)."""
    from landseg.config.overrides import apply_overrides
    from landseg.tuning.search import setting_override

    data = tuning.config.model_dump(mode="json", exclude={"search"}, exclude_none=True)
    apply_overrides(data, [setting_override(k, v) for k, v in params.items()])
    # its own job folder: run as it is, `landseg cv` would otherwise write into the search's
    data["output_setup"]["name_exp_log"] = f"{tuning.folder.name}{BEST_JOB_SUFFIX}"
    header = (
        f"# landseg tune: trial {trial} of {tuning.folder}, the best on every rotation at once.\n"
        "# Optimistic: every test subject was some task's validation group while it was chosen;\n"
        "# the search's honest result is the nested one in summary.md.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def importance_figure(results: dict[str, Any], title: str) -> Any:
    from landseg.loggers.figures import new_figure

    found = results["importance"]
    fig = new_figure(6.0, max(2.0, 0.5 * len(found) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    if found:
        names = list(found)[::-1]
        ax.barh(names, [found[n] for n in names], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (PED-ANOVA)")
    else:
        ax.text(0.5, 0.5, results["importance_note"], ha="center", va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title(title)
    return fig


def write_results(tuning: Tuning, study: Any) -> dict[str, Any]:
    results = build_results(tuning, study)
    files, title = tuning.files, tuning.folder.name
    atomic_write_json(files.summary_json, results)
    atomic_write_text(files.summary_md, results_markdown(results, title))
    atomic_write_text(files.trials_csv, trials_csv(results))
    if results["best"] is not None:
        best = results["best"]
        atomic_write_text(
            files.best_config, best_config_text(tuning, best["params"], best["trial"])
        )
    fig = importance_figure(results, f"{title}: importance of each setting")
    with atomic_path(files.importance) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return results


def results_path(folder: Path) -> Path:
    return JobFolder(folder).summary_md
