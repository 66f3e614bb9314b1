"""A search: an Optuna study in the tune folder, each of its trials a ``landseg cv`` job.

The tune folder (``<output_folder>/<name_exp_log or "tune">``) holds ``study.db`` (Optuna's RDB
storage, SQLite), ``trials/trial-NNN`` (one cv job per trial) and the results (see
:mod:`landseg.tuning.results`). Trials run one at a time; the tasks inside a trial run as in
``landseg cv``: sequentially, with ``--workers N``, or over MPI ranks.

A search is resumable like a job. Optuna stores trials, not its sampler's random state, so the
sampler is made anew with seed ``train_setup.random_seed + trial number`` before each ask: a
search killed and run again asks the same questions, given the same finished trials. A trial
left RUNNING (its cv job interrupted) continues its job and reports under its own number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landseg.config.continuation import result_relevant
from landseg.config.schema import LandsegConfig
from landseg.config.search import Search, SearchParam
from landseg.core.errors import ConfigError
from landseg.core.files import folder_problem
from landseg.core.signals import StopSignals
from landseg.jobs.cv_plan import data_lines, job_line
from landseg.jobs.folder import JobFolder
from landseg.jobs.plan import Job, Row, prepare_job
from landseg.runs.checkpoints import CheckpointName
from landseg.runs.folder import RunFolder

log = logging.getLogger("landseg.tune")

STUDY_NAME = "landseg-tune"
#: The study's user attribute that records what the search is, so another search is refused.
FINGERPRINT = "fingerprint"
#: History keys of each objective (see landseg.callbacks.history).
OBJECTIVE_KEYS = {"val_miou": "Average/IoU", "val_loss": "loss"}

#: Runs one trial's cv job (sequentially, with local workers, or over MPI) and returns its
#: summary; the caller picks how.
JobRunner = Callable[[Job, list[Row]], dict[str, Any]]


def search_section(config: LandsegConfig, source: Path) -> Search:
    if config.search is None:
        raise ConfigError(f"{source}: no search section; landseg tune needs one (see tuning.md)")
    if config.cross_validation is None:
        raise ConfigError(
            f"{source}: no cross_validation section; every trial of landseg tune is a "
            "cross-validation job (see tuning.md)"
        )
    return config.search


def setting_override(key: str, value: Any) -> str:
    """``--set`` text that gives ``key`` exactly ``value`` (JSON is read back as JSON)."""
    return f"{key}={json.dumps(value)}"


@dataclass(frozen=True)
class Tuning:
    """A checked search: the config file and overrides every trial starts from."""

    config_path: Path
    overrides: tuple[str, ...]
    config: LandsegConfig  # the base config, validated, paths resolved
    search: Search
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", JobFolder.of_search(self.config).path)

    @property
    def files(self) -> JobFolder:
        """The paths of the search folder."""
        return JobFolder(self.folder)

    def trial_overrides(self, number: int, params: dict[str, Any]) -> list[str]:
        """The base overrides, the trial's values, and the trial's own job folder.

        The trials share one decoded-tile cache (in the tune folder) unless
        ``data_source.cache_dir`` says where: they read the same tiles, and the cache is no
        part of a task's results (left out of its hash).
        """
        shared = []
        if self.config.data_source.cache_dir is None:
            shared.append(setting_override("data_source.cache_dir", str(self.files.cache)))
        return [
            *self.overrides,
            *(setting_override(key, value) for key, value in params.items()),
            setting_override("output_setup.output_folder", str(self.files.trials)),
            setting_override("output_setup.name_exp_log", JobFolder.trial_name(number)),
            *shared,
        ]

    def trial_folder(self, number: int) -> Path:
        return self.files.trial(number).path

    def fingerprint(self) -> str:
        """What the trials' results depend on: the searched space, the objective, the sampler
        and the base config as cv hashes it, less ``output_setup`` (where the search is
        written: a search folder moved with its output folder is the same search) and
        ``search.trials`` (raising it continues the search)."""
        return self._fingerprint(with_output_setup=False)

    def fingerprint_before_2026_12_02(self) -> str:
        """The fingerprint searches started before 2026-12-02 recorded: meant to leave
        ``output_setup`` out, it kept it, so that such a search moved elsewhere is refused."""
        return self._fingerprint(with_output_setup=True)

    def _fingerprint(self, *, with_output_setup: bool) -> str:
        base = {
            key: value
            for key, value in result_relevant(
                self.config.model_dump(mode="json", exclude={"search"})
            ).items()
            if with_output_setup or not key.startswith("output_setup.")
        }
        space = self.search.model_dump(mode="json", by_alias=True, exclude={"trials"})
        text = json.dumps({"base": base, "search": space}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prepare_tuning(config_path: Path, overrides: list[str]) -> Tuning:
    """Config file -> checked search: the config, and every searched value at its extremes.

    Each end of every range and every choice is applied to the config and validated, so a
    searched key that does not exist, or a value its setting refuses, is one line naming
    ``search.params.<key>`` before any training.
    """
    from landseg.planning.prepare import prepare_config

    config = prepare_config(config_path, overrides)
    search = search_section(config, config_path)
    folder = JobFolder.of_search(config).path
    problem = folder_problem(folder)
    if problem:
        raise ConfigError(f"output_setup.name_exp_log: cannot make the search folder: {problem}")
    if JobFolder(folder).log.exists():  # a search written there would replace its summary
        raise ConfigError(
            f"output_setup.name_exp_log: {folder} holds a cross-validation job (landseg cv); "
            "give the search another name_exp_log"
        )
    problems: list[str] = []
    for key, param in search.params.items():
        for value in param.extremes():
            try:
                prepare_config(config_path, [*overrides, setting_override(key, value)])
            except ConfigError as error:
                shown = json.dumps(value)
                problems += [f"search.params.{key}: {shown}: {line}" for line in error.problems]
                break  # one value's problems per key: the others usually repeat them
    if problems:
        raise ConfigError(problems)
    return Tuning(config_path, tuple(overrides), config, search)


@dataclass(frozen=True)
class TunePlan:
    """A checked search, accepted by its tune folder, and its first trial's checked job
    (every trial's job has the same rows: only the searched settings differ)."""

    tuning: Tuning
    first_job: Job

    def describe(self) -> list[str]:
        """What ``landseg validate`` prints of the plan."""
        searched = self.tuning.search
        tasks = len(self.first_job.plan.tasks)
        study = JobFolder(self.tuning.folder).study
        return [
            job_line(self.first_job),
            f"search: {searched.trials} trials of {tasks} tasks over "
            f"{', '.join(searched.params)}, objective {searched.objective}",
            f"tune folder {self.tuning.folder}: "
            + ("continues its search" if study.is_file() else "starts"),
            *data_lines(self.first_job),
        ]


def plan_tune(config_path: Path, overrides: list[str], *, device_check: bool = True) -> TunePlan:
    """``landseg tune -c CONFIG``'s plan: every check and refusal, in tune's order (the
    search, its folder, then a trial's cross-validation job); nothing is written."""
    tuning = prepare_tuning(config_path, overrides)
    refuse_other_search(tuning)
    job, _ = prepare_job(
        config_path, tuning.trial_overrides(0, {}), dry_run=True, device_check=device_check
    )
    return TunePlan(tuning, job)


# ---------------------------------------------------------------------------- Optuna


def distribution(param: SearchParam) -> Any:
    """The Optuna distribution of one searched setting."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if param.float_range is not None:
        low, high = param.float_range
        return FloatDistribution(low, high, log=param.log, step=param.step)
    if param.int_range is not None:
        low_int, high_int = param.int_range
        step = int(param.step) if param.step is not None else 1
        return IntDistribution(low_int, high_int, log=param.log, step=step)
    return CategoricalDistribution(list(param.choice or []))


def make_sampler(search: Search, seed: int) -> Any:
    from optuna.samplers import RandomSampler, TPESampler

    return TPESampler(seed=seed) if search.sampler == "tpe" else RandomSampler(seed=seed)


def open_study(tuning: Tuning) -> Any:
    """The search's study in ``study.db``, created on the first launch; a folder that holds
    another search (other space, objective, sampler or base config) is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuning.folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tuning.files.study}")
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction=tuning.search.direction(),
        load_if_exists=True,
    )
    _refuse_other_search(study, tuning)
    if study.user_attrs.get(FINGERPRINT) != tuning.fingerprint():  # new, or recorded before
        study.set_user_attr(FINGERPRINT, tuning.fingerprint())
    return study


def refuse_other_search(tuning: Tuning) -> None:
    """The refusal :func:`open_study` makes of a folder holding another search, for
    ``landseg validate``: an existing study is read, nothing is created."""
    path = tuning.files.study
    if not path.is_file():
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except KeyError:  # a study.db without the search's study: open_study creates it
        return
    _refuse_other_search(study, tuning)


def _refuse_other_search(study: Any, tuning: Tuning) -> None:
    recorded = study.user_attrs.get(FINGERPRINT)
    if recorded not in (None, tuning.fingerprint(), tuning.fingerprint_before_2026_12_02()):
        raise ConfigError(
            f"{tuning.folder}: holds a search with another search section or base config; "
            "give output_setup.name_exp_log another name to start a new search there"
        )


def next_trial(study: Any, tuning: Tuning) -> tuple[int, dict[str, Any]] | None:
    """The trial to run now: one left RUNNING by an earlier launch, else a new one; None when
    ``search.trials`` trials exist."""
    from optuna.trial import Trial, TrialState

    search = tuning.search
    trials = study.get_trials(deepcopy=False)
    seed = tuning.config.train_setup.random_seed
    space = {key: distribution(param) for key, param in search.params.items()}
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        trial = min(running, key=lambda t: t.number)
        params = dict(trial.params)
        if set(params) != set(space):
            # killed between two parameters being stored: draw the missing ones now
            study.sampler = make_sampler(search, seed + trial.number)
            live = Trial(study, trial._trial_id)
            params = {key: live._suggest(key, dist) for key, dist in space.items()}
        return trial.number, params
    if len(trials) >= search.trials:
        return None
    study.sampler = make_sampler(search, seed + len(trials))
    trial = study.ask(fixed_distributions=space)
    return trial.number, dict(trial.params)


# ---------------------------------------------------------------------------- scores


def task_validation_score(run_dir: Path, objective: str) -> float | None:
    """The task's validation ``objective`` at its best-val_loss checkpoint (the model its test
    evaluated), from its history; None when the task has none."""
    folder = RunFolder(run_dir)
    try:
        history = json.loads(folder.history.read_text())
        tests = json.loads(folder.test_history.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    epoch: int | None = None
    if tests:
        name = tests[max(tests, key=int)].get("checkpoint")
        parsed = CheckpointName.parse(name) if name else None
        epoch = parsed.epoch if parsed is not None and parsed.kind == "loss" else None
    if epoch is None or str(epoch) not in history:
        losses = [
            (float(entry["loss"]), -int(key))
            for key, entry in history.items()
            if entry.get("loss") is not None and math.isfinite(float(entry["loss"]))
        ]
        if not losses:
            return None
        epoch = -min(losses)[1]
    value = history[str(epoch)].get(OBJECTIVE_KEYS[objective])
    return None if value is None or not math.isfinite(float(value)) else float(value)


def trial_value(job: Job, objective: str) -> float | None:
    """The trial's objective: the mean over the job's tasks of each task's validation score
    (None when a task has none)."""
    scores = [task_validation_score(job.task_dir(task), objective) for task in job.plan.tasks]
    if not scores or any(score is None for score in scores):
        return None
    return math.fsum(score for score in scores if score is not None) / len(scores)


# ---------------------------------------------------------------------------- the loop


def run_search(tuning: Tuning, run_job: JobRunner) -> Any:
    """Run (or continue) the search until ``search.trials`` trials are done; return the study.

    A stop signal inside a trial stops its job at a checkpoint (the trial stays RUNNING and
    continues on the next launch); one between trials stops the search before the next.
    :class:`StopRequested` propagates either way. A trial whose job ends with tasks missing
    (failed) is recorded FAIL and the search goes on.
    """
    from optuna.trial import TrialState

    from landseg.jobs.runner import job_stopped

    study = open_study(tuning)
    with StopSignals(tuning.config.device_setup.stop_signal_numbers()) as stop:
        while (chosen := next_trial(study, tuning)) is not None:
            number, params = chosen
            log.info("trial %d: %s", number, ", ".join(f"{k}={v}" for k, v in params.items()))
            job, rows = prepare_job(tuning.config_path, tuning.trial_overrides(number, params))
            if stop.requested is not None:
                raise job_stopped(job, stop.requested)
            summary = run_job(job, rows)
            value = trial_value(job, tuning.search.objective) if summary["complete"] else None
            if value is None:
                missing = ", ".join(m["task"] for m in summary["missing"]) or "no score"
                log.error("trial %d failed: %s", number, missing)
                study.tell(number, state=TrialState.FAIL)
            else:
                study.tell(number, value)
            if stop.requested is not None:
                raise job_stopped(job, stop.requested)
    return study
