"""The bad-input corpus: every broken config or dataset gives exit 2 and names its culprit.

Each case mutates the (valid) demo config or its data, runs ``landseg validate`` and checks:
exit code 2, no traceback, every stderr line one problem, and the culprit (key, file or row)
named.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from landseg.cli import main
from landseg.io import write_geotiff
from tests.conftest import write_config

Mutation = Callable[[dict, Path, Path], None]


def setkey(path: str, value: object) -> Mutation:
    """Set a dotted key (creating sections) to a value."""

    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def delkey(path: str) -> Mutation:
    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        for mutation in mutations:
            mutation(config, tmp, demo)

    return mutate


def demo_rows(demo: Path, csv: str = "train.csv") -> list[list[str]]:
    rows = [line.split(",") for line in (demo / csv).read_text().splitlines() if line.strip()]
    return [[str(demo / cell) for cell in row] for row in rows]


def csv_with(rows_fn: Callable[[Path, Path], list[str]], key: str = "train_file") -> Mutation:
    """Point data_source.<key> at a new CSV whose lines rows_fn(tmp, demo) returns."""

    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        path = tmp / f"broken_{key}.csv"
        path.write_text("\n".join(rows_fn(tmp, demo)) + "\n")
        config["data_source"][key] = str(path)

    return mutate


def with_raster(kind: str) -> Mutation:
    """Replace the first train image by a broken raster of the given kind."""

    def rows(tmp: Path, demo: Path) -> list[str]:
        lines = [",".join(r) for r in demo_rows(demo)]
        image, mask = demo_rows(demo)[0]
        bad = tmp / "bad.tif"
        if kind == "empty":
            bad.write_bytes(b"")
        elif kind == "garbage":
            bad.write_bytes(b"this is not a tiff" * 10)
        elif kind == "truncated":
            bad.write_bytes(Path(image).read_bytes()[:100])
        elif kind == "size":
            write_geotiff(bad, np.zeros((4, 16, 16), np.uint8))
        elif kind == "bands":
            write_geotiff(bad, np.zeros((2, 32, 32), np.uint8))
        elif kind == "uint16":
            write_geotiff(bad, np.zeros((4, 32, 32), np.uint16))
        lines[0] = f"{bad},{mask}"
        return lines[:1] if kind == "uint16" else lines  # one dtype, so only pixel_range fails

    return csv_with(rows)


def same_split_csvs(config: dict, tmp: Path, demo: Path) -> None:
    """Validate and test on the broken train CSV too (one dtype everywhere)."""
    config["data_source"]["val_file"] = config["data_source"]["train_file"]
    config["data_source"]["test_file"] = None


def no_wandb(config: dict, tmp: Path, demo: Path) -> None:
    config["__no_wandb__"] = True  # the test hides the wandb package


def syntax(text: str, suffix: str = ".json") -> Mutation:
    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        config["__raw__"] = (text, suffix)

    return mutate


CASES: dict[str, tuple[Mutation, str]] = {
    # --- syntax
    "json missing comma": (syntax('{"data_source": {"a": 1\n "b": 2}}'), ":2:2"),
    "yaml bad indent": (syntax("data_source:\n  a: 1\n b: 2\n", ".yaml"), ":3:2"),
    "top level list": (syntax("[1, 2]"), "mapping of sections"),
    # --- keys and types
    "misspelt section": (setkey("train_setp", {}), "did you mean 'train_setup'"),
    "misspelt key": (setkey("data_source.mask_band", [1]), "did you mean 'mask_bands'"),
    "missing train_file": (delkey("data_source.train_file"), "data_source.train_file"),
    "missing model_name": (delkey("train_setup.model_name"), "train_setup.model_name"),
    "missing output_folder": (delkey("output_setup.output_folder"), "output_folder"),
    "negative lr": (setkey("train_setup.lr", -0.1), "train_setup.lr"),
    "epochs not a number": (setkey("train_setup.epochs", "many"), "train_setup.epochs"),
    "batch size 0": (setkey("train_setup.batch_size", 0), "train_setup.batch_size"),
    "val_check_interval 1.5": (setkey("train_setup.val_check_interval", 1.5), "val_check_interval"),
    "save_top_k -1": (setkey("output_setup.save_top_k", -1), "output_setup.save_top_k"),
    "num_workers -1": (setkey("device_setup.num_workers", -1), "device_setup.num_workers"),
    "device -1": (setkey("device_setup.device", -1), "device_setup.device"),
    "device bad string": (setkey("device_setup.device", "cuda0"), "device_setup.device"),
    "image band 0": (setkey("data_source.image_bands", [0, 1]), "data_source.image_bands[0]"),
    "percentage_val 1.5": (
        both(delkey("data_source.val_file"), setkey("data_source.percentage_val", 1.5)),
        "data_source.percentage_val",
    ),
    "version with slash": (setkey("output_setup.version_name", "a/b"), "version_name"),
    "output type": (setkey("output_setup.prediction_output_type", "int8"), "prediction_output"),
    "monitor": (setkey("train_setup.early_stopping", {"monitor": "acc"}), "early_stopping.monitor"),
    # --- names (registries)
    "model name": (setkey("train_setup.model_name", "unett"), "train_setup.model_name"),
    "loss name": (setkey("train_setup.loss", "cee"), "train_setup.loss"),
    "optimizer name": (
        setkey("train_setup.optimizer_config", {"optimizer": "adamm"}),
        "optimizer_config.optimizer",
    ),
    "optimizer param": (
        setkey("train_setup.optimizer_config", {"optimizer": "sgd", "momentun": 0.5}),
        "optimizer_config.momentun",
    ),
    "optimizer value": (
        setkey("train_setup.optimizer_config", {"optimizer": "sgd", "momentum": -1}),
        "optimizer_config.momentum",
    ),
    "scheduler name": (
        setkey("train_setup.scheduler_config", {"scheduler": "steplr"}),
        "scheduler_config.scheduler",
    ),
    "scheduler param": (
        setkey("train_setup.scheduler_config", {"scheduler": "reducelronplateau", "patiense": 2}),
        "scheduler_config.patiense",
    ),
    "augmentation name": (
        setkey("data_source.data_augmentation", {"train": ["flip"]}),
        "data_augmentation.train[0]",
    ),
    "augmentation on val": (
        setkey("data_source.data_augmentation", {"val": ["rotation90"]}),
        "data_augmentation.val",
    ),
    "accelerator": (setkey("device_setup.accelerator", "gpux"), "device_setup.accelerator"),
    "strategy": (setkey("device_setup.strategy", "dpp"), "device_setup.strategy"),
    "export format": (setkey("train_setup.export_checkpoint", "onnx"), "export_checkpoint"),
    "model param": (setkey("train_setup.model_params", {"widht": 3}), "model_params"),
    "deeplab stride": (
        both(
            setkey("train_setup.model_name", "deeplab"),
            setkey("train_setup.model_params", {"output_stride": 12}),
        ),
        "model_params.output_stride",
    ),
    "wandb missing": (both(setkey("output_setup.use_wandb", True), no_wandb), "use_wandb"),
    # --- cross-field rules
    "labels vs bands": (
        setkey("data_source.class_labels", ["a", "b"]),
        "data_source.class_labels",
    ),
    "imbalance length": (setkey("train_setup.class_imbalance", [1, 1]), "class_imbalance"),
    "imbalance with bce": (
        both(setkey("train_setup.loss", "bce"), setkey("train_setup.class_imbalance", [1] * 4)),
        "train_setup.class_imbalance",
    ),
    "mean std lengths": (
        setkey("data_source.normalization_weights", {"train": {"mean": [0.5], "std": [1, 1]}}),
        "normalization_weights.train",
    ),
    "mean vs bands": (
        setkey(
            "data_source.normalization_weights",
            {"train": {"mean": [0.5] * 3, "std": [0.2] * 3}},
        ),
        "normalization_weights.train.mean",
    ),
    "prediction without test": (
        both(delkey("data_source.test_file"), setkey("output_setup.get_prediction", True)),
        "output_setup.get_prediction",
    ),
    # --- data
    "missing csv": (setkey("data_source.train_file", "/nonexistent/train.csv"), "train.csv"),
    "empty csv": (csv_with(lambda tmp, demo: []), "broken_train_file.csv"),
    "one column": (
        csv_with(lambda tmp, demo: [demo_rows(demo)[0][0]]),
        "broken_train_file.csv",
    ),
    "missing image": (
        csv_with(lambda tmp, demo: [f"{tmp}/nope.tif,{demo_rows(demo)[0][1]}"]),
        "nope.tif",
    ),
    "mask bands 15": (setkey("data_source.mask_bands", list(range(1, 16))), "mask_bands"),
    "image band 9": (setkey("data_source.image_bands", [1, 9]), "data_source.image_bands"),
    "zero-byte raster": (with_raster("empty"), "bad.tif"),
    "garbage raster": (with_raster("garbage"), "bad.tif"),
    "truncated raster": (with_raster("truncated"), "bad.tif"),
    "size mismatch": (with_raster("size"), "bad.tif"),
    "band count": (with_raster("bands"), "bad.tif"),
    "uint16 without pixel_range": (
        both(with_raster("uint16"), setkey("output_setup.get_prediction", False), same_split_csvs),
        "data_source.pixel_range",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_rejected_with_its_culprit(
    case: str,
    demo_config: dict,
    demo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mutation, culprit = CASES[case]
    mutation(demo_config, tmp_path, demo_dir)
    raw = demo_config.pop("__raw__", None)
    if demo_config.pop("__no_wandb__", False):
        monkeypatch.setitem(sys.modules, "wandb", None)
    if raw:
        path = tmp_path / f"config{raw[1]}"
        path.write_text(raw[0])
    else:
        path = write_config(tmp_path / "config.json", demo_config)
    code = main(["validate", "-c", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert culprit in err, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 50


def test_every_problem_is_reported_at_once(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["train_setup"].update(lr=-1, loss="cee", epochs=0)
    demo_config["device_setup"]["num_workers"] = -3
    code = main(["validate", "-c", str(write_config(tmp_path / "c.json", demo_config))])
    err = capsys.readouterr().err
    assert code == 2
    for key in ("train_setup.lr", "train_setup.epochs", "device_setup.num_workers"):
        assert key in err


def test_verbose_shows_the_traceback(demo_config: dict, tmp_path: Path) -> None:
    from landseg.errors import ConfigError

    demo_config["train_setup"]["lr"] = -1
    with pytest.raises(ConfigError):
        main(["validate", "-v", "-c", str(write_config(tmp_path / "c.json", demo_config))])


def test_valid_demo_config_passes(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["validate", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 0
    assert "valid" in capsys.readouterr().out


def test_overrides_are_typed(demo_config: dict, tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path / "c.json", demo_config)
    assert main(["validate", "-c", str(path), "--set", "train_setup.lr=1e-3"]) == 0
    code = main(["validate", "-c", str(path), "--set", "train_setup.lr=-2"])
    assert code == 2 and "train_setup.lr" in capsys.readouterr().err
    assert main(["validate", "-c", str(path), "--set", "nonsense"]) == 2


def test_json_and_yaml_read_the_same(demo_config: dict, tmp_path: Path) -> None:
    import yaml

    from landseg.config.load import load_config

    json_path = write_config(tmp_path / "c.json", demo_config)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(yaml.safe_dump(json.loads(json_path.read_text())))
    assert load_config(json_path) == load_config(yaml_path)
