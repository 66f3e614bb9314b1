"""`landseg validate` rejects what `train` and `cv` would reject, with the key named, and writes
nothing; `--resume` with `--set` follows the continue rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from landseg.cli.main import main
from tests.helpers import cv_config, write_config

NO_GPU = not torch.cuda.is_available()


def validate(path: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["validate", "-c", str(path), *extra])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_refused_unless_told_not_to_check(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["device_setup"].update(accelerator="gpu", device=[0])
    path = write_config(tmp_path / "c.json", demo_config)
    code, err = validate(path, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: device_setup.accelerator: 'gpu', but this machine has no")
    assert validate(path, capsys, "--no-device-check")[0] == 0


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("device", [[0, 1], "1"])  # ids, as a list and as ODEON's string
def test_gpu_ids_without_an_accelerator_on_a_machine_without_gpu_are_one_line(
    device: object, demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """accelerator auto (the default) picks the CPU here, where ids mean nothing: Lightning
    failed with a traceback once the run folder was made."""
    demo_config["device_setup"].pop("accelerator", None)
    demo_config["device_setup"]["device"] = device
    path = write_config(tmp_path / "c.json", demo_config)
    code, err = validate(path, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: device_setup.device: GPU ids [")
    assert main(["train", "-c", str(path)]) == 2
    assert not (tmp_path / "runs").exists()
    assert validate(path, capsys, "--no-device-check")[0] == 0


def test_validate_refuses_the_run_folders_train_refuses(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A version that exists already, or nothing to continue: train's refusals, and
    validate creates nothing to find them."""
    demo_config["output_setup"].update(name_exp_log="exp", version_name="v1")
    demo_config["train_setup"]["continue_training"] = True
    path = write_config(tmp_path / "c.json", demo_config)
    code, err = validate(path, capsys)
    assert code == 2 and err == [
        f"error: train_setup.continue_training: no run to continue at "
        f"{tmp_path / 'runs' / 'exp' / 'v1'}; set continue_training false to start it"
    ]
    assert not (tmp_path / "runs").exists()
    run = tmp_path / "runs" / "exp" / "v1"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"status": "finished", "epochs_done": 1}')
    demo_config["train_setup"]["continue_training"] = False
    path = write_config(tmp_path / "c.json", demo_config)
    code, err = validate(path, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: output_setup.version_name: run folder {run} already exists")
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


def test_a_parameter_of_the_wrong_type_is_refused_before_training(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["train_setup"]["scheduler_config"] = {"patience": "two"}
    code, err = validate(write_config(tmp_path / "c.json", demo_config), capsys)
    assert (code, err) == (
        2,
        ["error: train_setup.scheduler_config.patience: ReduceLROnPlateau takes int, "
         "got 'two' (str)"],
    )  # fmt: skip


def test_yaml_numbers_written_1e_7_stay_numbers(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """YAML 1.1 (PyYAML) reads ``1e-7`` as a string; landseg takes the number meant."""
    demo_config["train_setup"]["scheduler_config"] = {"min_lr": 1e-7, "factor": 0.5}
    text = yaml.safe_dump(demo_config).replace("1.0e-07", "1e-7")
    assert "min_lr: 1e-7" in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["train_setup"]["scheduler_config"]["min_lr"] == "1e-7"
    assert validate(path, capsys) == (0, [])


def test_cv_groups_that_do_not_exist_are_refused_by_validate(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = cv_config(demo_dir, tmp_path / "runs", groups=["1", "2", "9"])
    code, err = validate(write_config(tmp_path / "c.json", config), capsys)
    assert code == 2
    assert err == ["error: cross_validation.groups: unknown group(s) 9; the file has: 1, 2, 3"]
    assert not (tmp_path / "runs").exists()  # validate writes nothing


def test_a_valid_cv_config_validates_with_its_plan(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = cv_config(demo_dir, tmp_path / "runs", groups=["1", "2"])
    capsys.readouterr()
    assert main(["validate", "-c", str(write_config(tmp_path / "c.json", config))]) == 0
    out = capsys.readouterr().out
    assert (
        "cross-validation: 2 groups, 1 test subjects, 1 tasks, tiles per task: train 6, val 2, "
        "test 8"
    ) in out
    assert "splits {" not in out  # the whole rows' split sizes, which no task has
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_resume_with_set_follows_the_continue_rule(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["train_setup"].update(epochs=1, batch_size=8)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v1", get_prediction=False, save_top_k=1
    )
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 0
    run = tmp_path / "runs" / "exp" / "v1"
    last = run / "checkpoints" / "lightunet-last.ckpt"
    capsys.readouterr()
    assert main(["train", "--resume", str(last), "--set", "train_setup.lr=0.5"]) == 2
    assert "error: train_setup.lr: " in capsys.readouterr().err
    # a checkpoint outside a run's checkpoints folder: refused, the folders around untouched
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ckpts").mkdir(parents=True)
    shutil.copy(last, elsewhere / "ckpts" / "model.ckpt")
    (elsewhere / "config.json").write_text("mine")
    assert main(["train", "--resume", str(elsewhere / "ckpts" / "model.ckpt")]) == 2
    assert "not in the checkpoints folder of a run (no run.json in" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["ckpts", "config.json", "model.ckpt"]
    assert (elsewhere / "config.json").read_text() == "mine"
    # a copy of the run (or an archived one, renamed) continues under its own names
    shutil.copytree(run, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert main(["train", "--resume", str(last), "--set", "train_setup.epochs=2"]) == 0
    state = json.loads((run / "run.json").read_text())
    assert state["epochs_done"] == 2
    assert state["resumed"][-1]["changed"] == {"train_setup.epochs": [1, 2]}
    copied_last = copy / "checkpoints" / "lightunet-last.ckpt"
    record = {"from": str(run), "date": "2026-12-01"}  # as landseg archive leaves a run
    copied_state = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**copied_state, "archived": record}))
    assert main(["train", "--resume", str(copied_last), "--set", "train_setup.epochs=2"]) == 0
    names = sorted(p.name for p in (copy / "checkpoints").glob("*.ckpt"))
    assert names == sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")), names
    assert torch.load(copied_last, weights_only=False)["epoch"] == 1  # the second, 0-based
    continued = json.loads((copy / "run.json").read_text())
    assert continued["epochs_done"] == 2 and continued["archived"] is None  # a run of its own
    # the archive itself is kept as it was validated: continuing it is refused, untouched
    archive = shutil.copytree(run, tmp_path / "exp" / "archived_v1_2026-12-01")
    before = {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    archived_last = archive / "checkpoints" / "lightunet-last.ckpt"
    capsys.readouterr()
    assert main(["train", "--resume", str(archived_last), "--set", "train_setup.epochs=3"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {archive}: an archived run is kept as it was validated; to train it further, "
        "copy the folder under another name and continue the copy, or start a new run from "
        "its weights with train_setup.init_weights"
    )
    assert {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()} == before
