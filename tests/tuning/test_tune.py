"""`landseg tune` on the demo data's 3 zones: 2 trials of lightunet over the learning rate,
1 epoch each, one task per test subject (validated on the next zone).

One search runs without interruption; a search stopped with Ctrl-C (in its first trial), run
again and killed with SIGKILL (in the middle of its second trial: the first is kept, the
second finished), then run again must end with the same trials, the same nested result and
the same best config. Two trials are the fewest that show it: a
nested selection among trials, a trial kept and one continued, one asked after a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from landseg.cli.main import main
from landseg.config.search import Search
from landseg.core.errors import ConfigError
from landseg.tuning.results import nested_selection
from landseg.tuning.search import prepare_tuning, task_validation_score
from tests.helpers import cv_config, sigkill_when, signal_when, write_config

SEARCH = {"params": {"train_setup.lr": {"float": [1e-4, 1e-1], "log": True}}, "trials": 2}


def tune_config(demo_dir: Path, output: Path, **search: Any) -> dict[str, Any]:
    config = cv_config(demo_dir, output, validation=1)
    config["cross_validation"].pop("test_groups")  # every zone is a test subject
    config["train_setup"]["epochs"] = 1
    config["output_setup"]["name_exp_log"] = "search"
    config["search"] = {**SEARCH, **search}
    return config


def results(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted search; returns its tune folder."""
    folder = tmp_path_factory.mktemp("tune-reference")
    config = write_config(folder / "tune.json", tune_config(demo_dir, folder / "runs"))
    assert main(["tune", "-c", str(config)]) == 0
    return folder / "runs" / "search"


# ---------------------------------------------------------------------------- checks


def test_the_search_section_is_checked_before_any_training(
    demo_dir: Path, tmp_path: Path, capsys
) -> None:
    config = tune_config(demo_dir, tmp_path / "runs")
    bad = {
        "train_setup.lrr": ({"float": [0.1, 0.2]}, "search.params.train_setup.lrr: 0.1: "),
        "train_setup.lr": ({"float": [-1.0, 0.2]}, "search.params.train_setup.lr: -1.0: "),
        "train_setup.model_name": (
            {"choice": ["lightunet", "resnet150x"]},
            'search.params.train_setup.model_name: "resnet150x": ',
        ),
        "train_setup.epochs": (  # the misspelt key itself, and the keys a config writes
            {"flaot": [0.1, 0.2]},
            "search.params.train_setup.epochs.flaot: unknown key (did you mean 'float'?); "
            "valid keys: choice, float, int, log, step",
        ),
    }
    for key, (param, culprit) in bad.items():
        config["search"]["params"] = {key: param}
        path = write_config(tmp_path / "tune.json", config)
        assert main(["tune", "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {culprit}") and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_tune_without_optuna_says_which_extra(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    path = write_config(tmp_path / "tune.json", tune_config(demo_dir, tmp_path / "runs"))
    assert main(["tune", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: landseg tune needs Optuna: install landseg's tune extra, pip install "
        "'landseg[tune]' (make installs it)"
    )
    assert not (tmp_path / "runs").exists()


def test_search_section_shape() -> None:
    with pytest.raises(ValueError, match="cannot be searched"):
        Search.model_validate(
            {"params": {"output_setup.output_folder": {"choice": ["a"]}}, "trials": 1}
        )
    with pytest.raises(ValueError, match="exactly one of"):
        Search.model_validate(
            {"params": {"train_setup.lr": {"float": [0.1, 1], "choice": [1]}}, "trials": 1}
        )
    with pytest.raises(ValueError, match="log: needs low above 0"):
        Search.model_validate(
            {"params": {"train_setup.lr": {"float": [0, 1], "log": True}}, "trials": 1}
        )
    with pytest.raises(ValueError, match="dotted key"):
        Search.model_validate({"params": {"lr": {"float": [0.1, 1]}}, "trials": 1})
    search = Search.model_validate(
        {
            "params": {"train_setup.batch_size": {"int": [2, 8], "step": 2}},
            "trials": 2,
            "objective": "val_loss",
        }
    )
    assert search.direction() == "minimize"
    assert search.params["train_setup.batch_size"].extremes() == [2, 8]


def test_tune_needs_cross_validation(demo_dir: Path, tmp_path: Path) -> None:
    config = tune_config(demo_dir, tmp_path / "runs")
    del config["cross_validation"]
    path = write_config(tmp_path / "tune.json", config)
    with pytest.raises(ConfigError, match="no cross_validation section"):
        prepare_tuning(path, [])


def test_nested_selection_picks_each_subject_on_its_own_validation_scores() -> None:
    def trial(number: int, scores: dict[str, tuple[float, float]]) -> dict[str, Any]:
        subjects = {s: {"val": v, "test": t} for s, (v, t) in scores.items()}
        return {"number": number, "state": "COMPLETE", "subjects": subjects}

    trials = [
        trial(0, {"a": (0.5, 0.9), "b": (0.4, 0.1)}),
        trial(1, {"a": (0.6, 0.2), "b": (0.4, 0.8)}),  # ties on b: the lower number wins
        {"number": 2, "state": "FAIL", "subjects": {"a": {"val": 0.99, "test": 0.99}}},
    ]
    chosen = nested_selection(trials, maximize=True)
    # the test score never chooses: a's test 0.2 is reported although trial 0 tested higher
    assert chosen == {
        "a": {"trial": 1, "val": 0.6, "test": 0.2},
        "b": {"trial": 0, "val": 0.4, "test": 0.1},
    }
    assert nested_selection(trials, maximize=False)["a"]["trial"] == 0


def test_validation_score_is_read_at_the_best_val_loss_checkpoint(tmp_path: Path) -> None:
    """Not the best val mIoU over epochs: the mIoU of the epoch whose checkpoint was tested."""
    history = {
        "0": {"loss": 0.9, "Average/IoU": 0.6},
        "1": {"loss": 0.5, "Average/IoU": 0.4},
        "2": {"loss": 0.7, "Average/IoU": 0.7},
    }
    (tmp_path / "history.json").write_text(json.dumps(history))
    test = {"2": {"checkpoint": "lightunet-loss-epoch=001-val_loss=0.5000.ckpt"}}
    (tmp_path / "history_test.json").write_text(json.dumps(test))
    assert task_validation_score(tmp_path, "val_miou") == 0.4
    assert task_validation_score(tmp_path, "val_loss") == 0.5


# ---------------------------------------------------------------------------- a whole search


@pytest.mark.slow
def test_search_writes_trials_nested_result_and_best_config(reference: Path, capsys) -> None:
    found = results(reference)
    trials = found["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert all(t["state"] == "COMPLETE" for t in trials)
    lrs = [t["params"]["train_setup.lr"] for t in trials]
    assert len(set(lrs)) == 2 and all(1e-4 <= lr <= 1e-1 for lr in lrs)
    for trial in trials:
        job = reference / trial["job"]
        assert (job / "summary.json").is_file()
        assert set(trial["subjects"]) == {"1", "2", "3"}  # one task per test subject
        scores = [s["val"] for s in trial["subjects"].values()]
        assert trial["value"] == pytest.approx(sum(scores) / 3, abs=1e-12)
        task_config = json.loads(next((job / "tasks").glob("*/config.json")).read_text())
        assert task_config["train_setup"]["lr"] == trial["params"]["train_setup.lr"]
        assert task_config["search"] is None  # a task is a plain run
    nested = found["nested"]
    assert set(nested["subjects"]) == {"1", "2", "3"}
    for subject, chosen in nested["subjects"].items():
        vals = [t["subjects"][subject]["val"] for t in trials]
        assert chosen["val"] == max(vals)
        assert chosen["test"] == trials[chosen["trial"]]["subjects"][subject]["test"]
    stats = nested["test_miou"]
    assert stats["n"] == 3 and stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
    assert nested["bootstrap"]["reliable"] is False  # 3 test subjects
    best = max(trials, key=lambda t: t["value"])
    assert found["best"]["trial"] == best["number"]
    text = (reference / "best_config.yaml").read_text()
    assert text.startswith("# landseg tune: trial") and "Optimistic" in text
    config = yaml.safe_load(text)
    assert config["train_setup"]["lr"] == best["params"]["train_setup.lr"]
    assert "search" not in config
    assert config["output_setup"]["name_exp_log"] == f"{reference.name}-best"  # its own folder
    assert main(["validate", "-c", str(reference / "best_config.yaml")]) == 0
    markdown = (reference / "summary.md").read_text()
    assert "## Trials" in markdown and "importance.png" in markdown
    assert "not reliable" in markdown
    assert (reference / "importance.png").stat().st_size > 0
    assert found["importance"] == {"train_setup.lr": 1.0}
    rows = (reference / "trials.csv").read_text().splitlines()
    assert rows[0] == "trial,state,train_setup.lr,val_miou,job" and len(rows) == 3
    capsys.readouterr()
    # run again: nothing left to train, the same results
    assert main(["tune", "-c", str(reference.parent.parent / "tune.json")]) == 0
    assert results(reference) == found
    assert "Test mIoU" in capsys.readouterr().out


@pytest.mark.slow
def test_a_folder_holding_another_search_is_refused_by_validate_and_tune(
    reference: Path, capsys
) -> None:
    config = str(reference.parent.parent / "tune.json")
    study = (reference / "study.db").read_bytes()
    assert main(["validate", "-c", config, "--set", "search.trials=5"]) == 0  # continues it
    capsys.readouterr()
    other = "train_setup.batch_size=2"
    for command in ("validate", "tune"):
        assert main([command, "-c", config, "--set", other]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (
            f"error: {reference}: holds a search with another search section or base config; "
            "give output_setup.name_exp_log another name to start a new search there"
        )
    assert (reference / "study.db").read_bytes() == study


@pytest.mark.slow
def test_a_moved_search_and_one_recorded_by_an_older_landseg_continue(
    reference: Path, tmp_path: Path, capsys
) -> None:
    """The search's fingerprint leaves out output_setup: a search folder moved with its output
    folder is the same search; a study that recorded the older fingerprint (output_setup
    included) is accepted and recorded anew."""
    import optuna

    from landseg.tuning.search import FINGERPRINT, STUDY_NAME, prepare_tuning

    moved = tmp_path / "runs"
    shutil.copytree(reference.parent, moved)
    config = reference.parent.parent / "tune.json"
    overrides = [f"output_setup.output_folder={moved}"]
    tuning = prepare_tuning(config, overrides)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{moved}/search/study.db")
    study.set_user_attr(FINGERPRINT, tuning.fingerprint_before_2026_12_02())
    found = results(moved / "search")
    capsys.readouterr()
    for command in ("validate", "tune"):
        assert main([command, "-c", str(config), "--set", *overrides]) == 0
    assert "holds a search" not in capsys.readouterr().err
    assert study.user_attrs[FINGERPRINT] == tuning.fingerprint()
    assert study.user_attrs[FINGERPRINT] == prepare_tuning(config, []).fingerprint()
    trials = results(moved / "search")["trials"]
    assert [trial["value"] for trial in trials] == [trial["value"] for trial in found["trials"]]


def study_states(folder: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(f"file:{folder / 'study.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    finally:
        db.close()


@pytest.mark.slow
def test_ctrl_c_then_sigkill_in_a_trial_then_rerun_ends_with_the_same_search(
    reference: Path, demo_dir: Path, tmp_path: Path
) -> None:
    """SIGINT to the process group in trial 0: its task stops at a resumable point, the trial
    stays RUNNING, the command exits 130 and says how to continue. The same command again
    continues trial 0 and is SIGKILLed in the middle of trial 1 (the first is kept, the second
    asked after a restart); run once more, the search ends as the reference: the same trials,
    nested result and best config. One search takes both stops: a search of its own for each
    trained trial 0 twice more and proved nothing more."""
    config = write_config(tmp_path / "tune.json", tune_config(demo_dir, tmp_path / "runs"))
    folder = tmp_path / "runs" / "search"
    trial_0 = folder / "trials" / "trial-000" / "tasks"
    returncode, err = signal_when(
        ["tune", "-c", str(config)],
        lambda: any(trial_0.glob("*/checkpoints/*-last.ckpt")),
        signal.SIGINT,
    )
    assert returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and lines[0].endswith("run the same command again to continue"), err
    assert "Traceback" not in err
    assert study_states(folder) == [(0, "RUNNING")]

    trial_1 = folder / "trials" / "trial-001" / "tasks"

    def mid_trial_1() -> bool:  # trial 1 has trained a task, and has tasks to go
        return any(trial_1.glob("*/history_test.json"))

    assert sigkill_when(["tune", "-c", str(config)], mid_trial_1) == -signal.SIGKILL
    assert study_states(folder) == [(0, "COMPLETE"), (1, "RUNNING")]
    assert main(["tune", "-c", str(config)]) == 0
    assert study_states(folder) == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert results(folder) == results(reference)
    assert (folder / "best_config.yaml").read_text().replace(str(tmp_path), "") == (
        reference / "best_config.yaml"
    ).read_text().replace(str(reference.parent.parent), "")


MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.slow
@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to the interpreter")
def test_tune_under_mpiexec_runs_each_trial_over_the_ranks(
    reference: Path, demo_dir: Path, tmp_path: Path
) -> None:
    """The search over 3 ranks: rank 0 runs the study and hands out each trial's tasks; the
    trials ask the same values as the sequential search, and score the same."""
    pytest.importorskip("mpi4py")
    config = write_config(tmp_path / "tune.json", tune_config(demo_dir, tmp_path / "runs"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_"))}
    command = [str(MPIEXEC), "-n", "3", sys.executable, "-m", "landseg.cli.main", "tune", "-c"]
    done = subprocess.run(
        [*command, str(config)], env=env, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Test mIoU") == 1  # only rank 0 reports
    found = results(tmp_path / "runs" / "search")["trials"]
    expected = results(reference)["trials"]
    assert [t["params"] for t in found] == [t["params"] for t in expected]
    assert [t["value"] for t in found] == pytest.approx([t["value"] for t in expected], rel=1e-5)
    workers = set()
    for trial in ("trial-000", "trial-001"):
        db = tmp_path / "runs" / "search" / "trials" / trial / "job.sqlite"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        workers |= {w for (w,) in con.execute("SELECT worker FROM tasks")}
        con.close()
    assert workers <= {"rank-1", "rank-2"}


@pytest.mark.slow
def test_cv_refuses_a_search_folder_and_tune_a_cv_job_folder(
    reference: Path, demo_dir: Path, tmp_path: Path, capsys
) -> None:
    """landseg cv on a tune config wrote its job into the search folder, over its summary."""
    config = str(reference.parent.parent / "tune.json")
    kept = (reference / "summary.json").read_bytes()
    assert main(["cv", "-c", config]) == 2
    assert f"{reference} holds a search (landseg tune)" in capsys.readouterr().err
    assert main(["validate", "-c", config]) == 0  # it checks the trials' jobs, not this one
    assert (reference / "summary.json").read_bytes() == kept
    assert not (reference / "job.sqlite").exists()
    job = tmp_path / "runs" / "search"
    job.mkdir(parents=True)
    (job / "job.sqlite").write_bytes(b"")
    path = write_config(tmp_path / "tune.json", tune_config(demo_dir, tmp_path / "runs"))
    assert main(["tune", "-c", str(path)]) == 2
    assert f"{job} holds a cross-validation job (landseg cv)" in capsys.readouterr().err
