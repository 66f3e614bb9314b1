"""Continuing a run with a changed config, fine-tuning instead, and runs that fail to start.

A continued run applies the settings that may change (docs: configuration and design) and
records them in run.json; any other difference is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from landseg.cli.main import main
from landseg.config.continuation import continuation_problems, result_relevant
from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError
from landseg.planning.prepare import prepare
from landseg.runs.folder import RunFolder, RunState
from landseg.training import run as run_module
from landseg.training.run import train
from tests.helpers import write_config


@pytest.fixture
def small(demo_config: dict) -> dict:
    demo_config["train_setup"].update(epochs=2, batch_size=8, lr=0.01)
    demo_config["output_setup"].update(
        name_exp_log="exp",
        version_name="v1",
        save_top_k=1,
        get_prediction=False,
        use_tensorboard=False,  # what these tests check is run.json, config.json, history.json
    )
    demo_config["data_source"].pop("test_file")  # and no test stage after each training
    return demo_config


@pytest.fixture
def small_run(small: dict, finished_run: Callable[[dict], Path]) -> Callable[[int], Path]:
    """``small_run(epochs)``: the small config's run trained ``epochs`` epochs and finished, as
    training left it (trained once per session, put back for each test); ``small`` is set to
    that run's output folder and epochs. Returns the run folder."""

    def run(epochs: int) -> Path:
        small["train_setup"]["epochs"] = epochs
        output = finished_run(small)
        small["output_setup"]["output_folder"] = str(output)
        return output / "exp" / "v1"

    return run


def run_cli(config: dict, tmp_path: Path, *extra: str) -> int:
    return main(["train", "-c", str(write_config(tmp_path / "c.json", config)), *extra])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def continued(config: dict, **train_setup: Any) -> dict:
    config = json.loads(json.dumps(config))
    config["train_setup"].update(continue_training=True, **train_setup)
    return config


# ---------------------------------------------------------------------------- the rule


def test_changeable_keys_are_applied_others_refused() -> None:
    old = {
        "train_setup": {"lr": 0.01, "epochs": 2, "early_stopping": {"patience": 3}},
        "device_setup": {"num_workers": 4, "precision": "32-true"},
        "output_setup": {"progress": 1},
    }
    new = json.loads(json.dumps(old))
    new["train_setup"].update(epochs=5, lr=0.001, continue_training=True)
    new["train_setup"]["early_stopping"]["patience"] = 9
    new["device_setup"].update(num_workers=0, precision="bf16-mixed")
    new["output_setup"]["progress"] = 0
    allowed, problems = continuation_problems(old, new)
    assert allowed == {
        "device_setup.num_workers": (4, 0),
        "output_setup.progress": (1, 0),
        "train_setup.early_stopping.patience": (3, 9),
        "train_setup.epochs": (2, 5),
    }
    assert [line.split(":")[0] for line in problems] == [
        "device_setup.precision",
        "train_setup.lr",
    ]
    assert problems[1].startswith("train_setup.lr: 0.01 in the run, 0.001 now; a continued run")


@pytest.mark.parametrize(
    ("key", "before", "after"),
    [
        ("freeze_encoder_epochs", 0, 3),
        ("freeze_encoder_epochs", 3, 1),
        ("encoder_lr_factor", 1.0, 0.1),
    ],
)
def test_the_fine_tuning_controls_are_kept_by_a_continued_run(
    key: str, before: float, after: float
) -> None:
    """Which epochs the encoder was frozen for, and its learning rate, are part of what the run
    trained (and the groups of its optimiser's state): a new run, or init_weights, changes them."""
    old = {"train_setup": {"model_name": "resnet18", key: before}}
    new = {"train_setup": {"model_name": "resnet18", key: after, "continue_training": True}}
    allowed, problems = continuation_problems(old, new)
    assert allowed == {}
    assert problems == [
        f"train_setup.{key}: {before!r} in the run, {after!r} now; a continued run keeps it "
        "(start a new run, or fine-tune from its weights with train_setup.init_weights)"
    ]
    assert f"train_setup.{key}" in result_relevant(old)


def test_a_different_process_count_is_refused() -> None:
    old = {"device_setup": {"accelerator": "cpu", "num_processes": 1}}
    new = {"device_setup": {"accelerator": "cpu", "num_processes": 2}}
    _, problems = continuation_problems(old, new)
    assert problems[-1].startswith("device_setup: 1 training processes in the run, 2 now")


def test_cv_task_hash_leaves_out_the_changeable_keys(demo_config: dict) -> None:
    from landseg.jobs.plan import task_hash

    base = LandsegConfig.model_validate(demo_config)
    same = LandsegConfig.model_validate(continued(demo_config, epochs=99))
    same.device_setup.num_workers = 7
    same.output_setup.progress = 0
    other = LandsegConfig.model_validate(continued(demo_config, lr=0.5))
    assert task_hash(base, {"train": "x"}) == task_hash(same, {"train": "x"})
    assert task_hash(base, {"train": "x"}) != task_hash(other, {"train": "x"})
    assert "train_setup.epochs" not in result_relevant(base.model_dump(mode="json"))


# ---------------------------------------------------------------------------- continuing


@pytest.mark.slow
def test_a_changed_lr_is_refused_and_the_run_folder_is_left_untouched(
    small: dict, small_run: Callable[[int], Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = small_run(2)
    before = snapshot(folder)
    capsys.readouterr()
    for key, value in (("lr", 0.001), ("model_name", "unet")):
        assert run_cli(continued(small, **{key: value}), tmp_path) == 2
        err = capsys.readouterr().err
        assert f"error: train_setup.{key}: " in err and "Traceback" not in err
        assert snapshot(folder) == before  # config.json, run.json, train.log: byte-identical
        # validate makes the same refusal (it said "valid", then train refused)
        assert main(["validate", "-c", str(tmp_path / "c.json")]) == 2
        assert capsys.readouterr().err == err


@pytest.mark.slow
def test_more_epochs_continue_the_run_and_the_change_is_recorded(
    small: dict, small_run: Callable[[int], Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = RunFolder(small_run(2))
    capsys.readouterr()
    assert run_cli(continued(small, epochs=2), tmp_path) == 0  # nothing to do
    assert (
        "finished (2 of 2 epochs); nothing left to do (train longer with more epochs: --set "
        "train_setup.epochs=N)"
    ) in capsys.readouterr().out
    assert run_cli(continued(small, epochs=3), tmp_path) == 0
    state = folder.state()
    assert state.status == "finished" and state.epochs_done == 3 and state.error is None
    assert len(state.resumed) == 1
    assert state.resumed[0]["changed"] == {"train_setup.epochs": [2, 3]}
    assert json.loads(folder.config_file.read_text())["train_setup"]["epochs"] == 3
    assert sorted(json.loads(folder.history.read_text())) == ["0", "1", "2"]


@pytest.mark.slow
def test_a_run_ended_by_early_stopping_is_complete(
    small: dict, small_run: Callable[[int], Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = RunFolder(small_run(1))
    folder.update_state(early_stopped=True)  # as if early stopping had ended it
    capsys.readouterr()
    assert run_cli(continued(small, epochs=5), tmp_path) == 0
    assert "ended by early stopping after 1 epochs; nothing left to do" in capsys.readouterr().out
    assert folder.state().epochs_done == 1


# ---------------------------------------------------------------------------- failed starts


@pytest.mark.slow
def test_a_failure_before_the_first_step_is_recorded_and_the_name_reused(
    small: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no trainer today")

    small["train_setup"]["epochs"] = 1  # a started run that trains: one epoch shows it
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "build_trainer", broken)
        with pytest.raises(RuntimeError, match="no trainer today"):
            run_cli(small, tmp_path)
    folder = RunFolder(tmp_path / "runs" / "exp" / "v1")
    state = folder.state()
    assert (state.status, state.error) == ("failed", "RuntimeError: no trainer today")
    assert folder.never_trained()
    assert run_cli(small, tmp_path) == 0  # the same version name, started again
    state = folder.state()
    assert (state.status, state.epochs_done, state.error) == ("finished", 1, None)


def test_a_start_that_fails_before_its_run_json_leaves_no_folder(
    small: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The network's weights fail to load (as imagenet weights do offline): the one error
    line, and no run folder holding an empty train.log (the folders it made are removed)."""
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.head.weight": torch.zeros(2)}}, other)
    small["train_setup"]["init_weights"] = str(other)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("the user's")
    assert run_cli(small, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train_setup.init_weights: ") and "holds another network" in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["keep.txt"]


def test_a_run_that_trained_is_never_taken_for_a_failed_start(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    RunState(status="failed", epochs_done=1).write(folder.path)
    assert not folder.never_trained()
    RunState(status="failed", epochs_done=0).write(folder.path)
    assert folder.never_trained()
    folder.checkpoints.mkdir()
    (folder.checkpoints / "lightunet-last.ckpt").write_bytes(b"x")
    assert not folder.never_trained()
    (tmp_path / "run2").mkdir()
    RunState(status="unknown").write(tmp_path / "run2")  # e.g. an empty run.json: kept
    assert not RunFolder(tmp_path / "run2").never_trained()


# ---------------------------------------------------------------------------- fine-tuning


class FirstWeights(Callback):
    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


@pytest.mark.slow
def test_init_weights_starts_a_new_run_from_another_runs_network(
    small: dict, small_run: Callable[[int], Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = small_run(1) / "checkpoints" / "lightunet-last.ckpt"
    trained = torch.load(source, weights_only=True)["state_dict"]
    tuned = json.loads(json.dumps(small))
    tuned["train_setup"].update(init_weights=str(source), lr=0.001, epochs=1)
    tuned["output_setup"]["version_name"] = "tuned"
    prepared = prepare(write_config(tmp_path / "t.json", tuned))
    probe = FirstWeights()
    train(prepared.config, prepared.summary, extra_callbacks=[probe])
    for key, value in probe.weights.items():
        assert torch.equal(value, trained[f"model.{key}"]), key
    state = RunFolder(source.parents[2] / "tuned").state()
    assert state.status == "finished" and state.resumed == []

    tuned["train_setup"]["model_name"] = "unet"
    tuned["output_setup"]["version_name"] = "other"
    capsys.readouterr()
    assert run_cli(tuned, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train_setup.init_weights: ") and "holds another network" in err


def test_init_weights_must_exist(small: dict, tmp_path: Path) -> None:
    small["train_setup"]["init_weights"] = "nope.ckpt"
    with pytest.raises(ConfigError, match=r"train_setup.init_weights: .*nope.ckpt"):
        prepare(write_config(tmp_path / "c.json", small))


@pytest.mark.slow
def test_a_damaged_run_json_is_said_when_the_run_is_continued(
    small: dict, small_run: Callable[[int], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_json = small_run(1) / "run.json"
    run_json.write_text('{"status": "fini')  # as a full disk might leave a file written in place
    with caplog.at_level("WARNING", logger="landseg"):
        assert run_cli(continued(small, epochs=2), tmp_path) == 0
    assert (
        f"{run_json}: unreadable (damaged?); rewritten without the run's start time and "
        "earlier resumes"
    ) in caplog.messages
    assert RunState.read(run_json.parent).epochs_done == 2  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_run_whose_output_folder_moved_is_continued_there(
    small: dict, small_run: Callable[[int], Path], tmp_path: Path
) -> None:
    """The output folder copied to another disk: the config names the new place, and the run
    continues there (it was refused: output_setup.output_folder differed from the run's)."""
    runs = small_run(1).parents[1]
    moved = tmp_path / "moved"
    shutil.move(runs, moved)
    small["output_setup"]["output_folder"] = str(moved)
    assert run_cli(continued(small, epochs=2), tmp_path) == 0
    state = json.loads((moved / "exp" / "v1" / "run.json").read_text())
    assert state["epochs_done"] == 2
    assert state["resumed"][-1]["changed"] == {
        "output_setup.output_folder": [str(runs), str(moved)],
        "train_setup.epochs": [1, 2],
    }
    assert not runs.exists()  # nothing written at the old place
