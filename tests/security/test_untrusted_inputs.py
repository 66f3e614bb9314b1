"""Untrusted inputs never run code.

A crafted checkpoint (a pickle whose ``__reduce__`` opens a marker file for writing: the marker
exists if and only if code ran) must be refused, with exit code 2 and one clear line, by every
command that loads a checkpoint; config values are names looked up in registries, never
imported or evaluated; and src/ never unpickles anything (checkpoints load with
``weights_only=True``, job state is SQLite or JSON).
"""

from __future__ import annotations

import ast
import json
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import REPO, run_cli, single_thread, write_config

SRC = REPO / "src" / "landseg"


class Payload:
    """Unpickling this opens ``marker`` for writing, creating it: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def craft_checkpoint(path: Path, marker: Path, fmt: str = "zip") -> Path:
    """A checkpoint-shaped file with the payload as its config: torch's zip format or a bare
    pickle (torch.load reads both)."""
    content = {
        "state_dict": {},
        "global_step": 10**6,  # the "most trained" checkpoint, should anything rank them
        "pytorch-lightning_version": "2.6.0",
        "hyper_parameters": {"config": Payload(marker), "in_channels": 4, "class_labels": []},
    }
    if fmt == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content))
    return path


def assert_one_clear_line(code: int, err: str, culprit: str) -> None:
    """Exit 2; stderr is one ``error:`` line naming the culprit; no traceback, no escapes."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert culprit in lines[0], err
    assert "Traceback" not in err and "\x1b[" not in err, err


def test_the_payload_really_runs_code(tmp_path: Path) -> None:
    """The control: without weights_only the crafted file does create the marker."""
    marker = tmp_path / "marker"
    path = craft_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("zip", "never runs code"),
        ("zip", "one clear line"),
        ("pickle", "never runs code"),
        ("pickle", "one clear line"),
    ],
)
def test_resume_from_crafted_checkpoint_is_refused(
    fmt: str, check: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "marker"
    evil = craft_checkpoint(tmp_path / "evil.ckpt", marker, fmt)
    code, err = run_cli(["train", "--resume", str(evil)], capsys)
    assert not marker.exists()
    if check == "never runs code":
        assert code == 2 and "Traceback" not in err, err
    else:
        assert_one_clear_line(code, err, str(evil))


def continue_config(demo_config: dict, tmp_path: Path, marker: Path) -> Path:
    """A run folder whose ``-last`` checkpoint is the crafted file, and its continue config."""
    run_dir = tmp_path / "runs" / "exp" / "v0"
    (run_dir / "checkpoints").mkdir(parents=True)
    craft_checkpoint(run_dir / "checkpoints" / "lightunet-last.ckpt", marker)
    (run_dir / "run.json").write_text(json.dumps({"status": "interrupted"}))
    demo_config["train_setup"].update(epochs=1, continue_training=True)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v0", use_tensorboard=False, get_prediction=False
    )
    demo_config["data_source"].pop("test_file")
    return write_config(tmp_path / "continue.json", demo_config)


@pytest.mark.parametrize(
    "check",
    [
        "never runs code",
        "refused",
    ],
)
def test_crafted_last_checkpoint_under_continue_training_is_refused(
    check: str,
    demo_config: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    marker = tmp_path / "marker"
    config = continue_config(demo_config, tmp_path, marker)
    with single_thread():
        code, err = run_cli(["train", "-c", str(config)], capsys)
    assert not marker.exists()
    if check == "refused":
        assert_one_clear_line(code, err, "lightunet-last.ckpt")


@pytest.mark.parametrize(
    "command",
    [
        "predict",
        "evaluate",
    ],
)
def test_inference_commands_refuse_crafted_checkpoint(
    command: str, demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The line is already single here (its first line), but holds torch's terminal escapes."""
    marker = tmp_path / "marker"
    evil = craft_checkpoint(tmp_path / "evil.ckpt", marker)
    first = (demo_dir / "test.csv").read_text().splitlines()[0].split(",")[0]
    if command == "predict":
        args = ["predict", "--run", str(evil), "--input", str(demo_dir / first)]
        args += ["--output", str(tmp_path / "out")]
    else:
        args = ["evaluate", "--run", str(evil), "--csv", str(demo_dir / "test.csv")]
    code, err = run_cli(args, capsys)
    assert not marker.exists()
    assert_one_clear_line(code, err, str(evil))


# ---------------------------------------------------------------------------- config values


def shell(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


CODE_VALUES: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "model os.system": ("train_setup.model_name", lambda m: "os.system"),
    "model __import__": ("train_setup.model_name", shell),
    "model eval": ("train_setup.model_name", lambda m: f'eval("{shell(m)}")'),
    "smp architecture": ("train_setup.model_name", lambda m: f"smp:{shell(m)}"),
    "loss": ("train_setup.loss", lambda m: "builtins.exec"),
    "optimizer": ("train_setup.optimizer_config", lambda m: {"optimizer": shell(m)}),
    "scheduler": ("train_setup.scheduler_config", lambda m: {"scheduler": "os.system"}),
    "augmentation": ("data_source.data_augmentation", lambda m: {"train": [shell(m)]}),
    "accelerator": ("device_setup.accelerator", shell),
    "strategy": ("device_setup.strategy", lambda m: "subprocess.call"),
    "export": ("train_setup.export_checkpoint", shell),
}


def set_dotted(config: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


@pytest.mark.parametrize("case", sorted(CODE_VALUES))
def test_config_values_are_never_evaluated(
    case: str, demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    key, make_value = CODE_VALUES[case]
    marker = tmp_path / "marker"
    set_dotted(demo_config, key, make_value(marker))
    code, err = run_cli(
        ["train", "-c", str(write_config(tmp_path / "c.json", demo_config))], capsys
    )
    assert not marker.exists()
    assert code == 2 and "Traceback" not in err, err
    assert key.rsplit(".", 1)[-1] in err, err


def test_yaml_python_tags_are_refused(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "marker"
    config = tmp_path / "c.yaml"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    config.write_text(json.dumps(demo_config).replace('"lightunet"', tag, 1))
    code, err = run_cli(["train", "-c", str(config)], capsys)
    assert not marker.exists()
    assert_one_clear_line(code, err, str(config))


def test_overrides_with_python_tags_stay_strings(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "marker"
    config = write_config(tmp_path / "c.json", demo_config)
    tag = f"train_setup.model_name=!!python/object/apply:os.system ['touch {marker}']"
    code, err = run_cli(["train", "-c", str(config), "--set", tag], capsys)
    assert not marker.exists()
    assert code == 2 and "train_setup.model_name" in err, err


# ---------------------------------------------------------------------------- source scan

#: Modules that deserialise executable objects; src/ never imports them.
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "joblib"}
#: Lightning calls that load a checkpoint when given ``ckpt_path``.
TRAINER_LOADS = {"fit", "validate", "test", "predict"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def unsafe_loads(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for each way this module could deserialise code."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] in PICKLE_MODULES:
                    yield node.lineno, f"imports {name}"
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("eval", "exec") or name.endswith(("yaml.load", "yaml.unsafe_load")):
            yield node.lineno, f"calls {name}"
        elif name.endswith(("torch.load", "load_from_checkpoint")):
            if not _is_true(_keyword(node, "weights_only")):
                yield node.lineno, f"{name} without weights_only=True"
        elif name.split(".")[-1] in TRAINER_LOADS and _keyword(node, "ckpt_path") is not None:
            if not _is_true(_keyword(node, "weights_only")):
                yield node.lineno, f"{name}(ckpt_path=...) without weights_only=True"
        elif name.endswith(("np.load", "numpy.load")) and _is_true(_keyword(node, "allow_pickle")):
            yield node.lineno, f"{name} with allow_pickle=True"


def test_src_never_unpickles() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in sorted(SRC.rglob("*.py"))
        for line, what in unsafe_loads(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, "\n".join(found)


def test_the_scan_finds_unsafe_loads() -> None:
    """The scan's own control: each pattern it forbids is found in a sample."""
    sample = """
import pickle
from dill import loads
torch.load(path)
torch.load(path, weights_only=False)
Task.load_from_checkpoint(path)
trainer.fit(task, ckpt_path=path)
np.load(path, allow_pickle=True)
yaml.load(text)
eval(text)
torch.load(path, weights_only=True)
trainer.fit(task, ckpt_path=path, weights_only=True)
"""
    assert sorted(line for line, _ in unsafe_loads(ast.parse(sample))) == list(range(2, 11))
