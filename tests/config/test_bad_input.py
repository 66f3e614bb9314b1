"""The bad-input corpus: every broken config or dataset gives exit 2 and names its culprit.

Each case of :data:`CASES` mutates the (valid) demo config or its data, runs ``landseg
validate`` and checks: exit code 2, no traceback, every stderr line one problem, and the culprit
(key, file or row) named. :data:`TRAIN_CASES` (output folders) need ``landseg train``: the run
folder is only resolved there. Pixel problems (NaN or infinite image values, mask values out of
range) are only visible once pixels are read, during training: a NaN stops the run cleanly
with its last checkpoint intact; an out-of-range mask value is ignored (docs/design.md).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from landseg.cli.main import main
from landseg.core.files import write_geotiff
from landseg.core.processes import process_start
from tests.helpers import run_cli, single_thread, write_config

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
    """Replace the first train image (or, for ``mask ...`` kinds, its mask; for ``small pair``
    both) by a broken raster of the given kind."""

    def rows(tmp: Path, demo: Path) -> list[str]:
        lines = [",".join(r) for r in demo_rows(demo)]
        image, mask = demo_rows(demo)[0]
        bad = tmp / "bad.tif"
        if kind == "empty":
            bad.write_bytes(b"")
        elif kind in ("garbage", "mask garbage"):
            bad.write_bytes(b"this is not a tiff" * 10)
        elif kind == "truncated":
            bad.write_bytes(Path(image).read_bytes()[:100])
        elif kind == "size":
            write_geotiff(bad, np.zeros((4, 16, 16), np.uint8))
        elif kind == "bands":
            write_geotiff(bad, np.zeros((2, 32, 32), np.uint8))
        elif kind in ("uint16", "mixed dtypes"):
            write_geotiff(bad, np.zeros((4, 32, 32), np.uint16))
        elif kind == "mask index":
            write_geotiff(bad, np.zeros((1, 32, 32), np.uint8))
        elif kind == "small pair":
            write_geotiff(bad, np.ones((4, 16, 16), np.uint8))
            write_geotiff(tmp / "bad_mask.tif", np.ones((4, 16, 16), np.uint8))
        elif kind in ("mask other crs", "mask shifted"):  # the same labels, placed elsewhere
            with rasterio.open(mask) as src:
                shift = src.transform * rasterio.Affine.translation(3, 0)  # 3 pixels east
                write_geotiff(
                    bad,
                    src.read(),
                    crs="EPSG:4326" if kind == "mask other crs" else src.crs,
                    transform=src.transform if kind == "mask other crs" else shift,
                )
        elif kind == "folder":
            bad.mkdir()
        if kind.startswith("mask"):
            lines[0] = f"{image},{bad}"
        else:
            lines[0] = f"{bad},{tmp / 'bad_mask.tif' if kind == 'small pair' else mask}"
        return lines[:1] if kind == "uint16" else lines  # one dtype, so only pixel_range fails

    return csv_with(rows)


def same_split_csvs(config: dict, tmp: Path, demo: Path) -> None:
    """Validate and test on the broken train CSV too (one dtype everywhere)."""
    config["data_source"]["val_file"] = config["data_source"]["train_file"]
    config["data_source"]["test_file"] = None


def no_wandb(config: dict, tmp: Path, demo: Path) -> None:
    config["__no_wandb__"] = True  # the test hides the wandb package


def syntax(text: str | bytes, suffix: str = ".json") -> Mutation:
    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        config["__raw__"] = (text, suffix)

    return mutate


def config_path(path: str) -> Mutation:
    """Give ``landseg validate -c`` this path instead of the written config."""

    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        config["__path__"] = path.format(tmp=tmp, demo=demo)

    return mutate


def csv_bytes(data: bytes) -> Mutation:
    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        path = tmp / "broken_train_file.csv"
        path.write_bytes(data)
        config["data_source"]["train_file"] = str(path)

    return mutate


def config_file_as(key: str) -> Mutation:
    """Point ``key`` at a text file (the demo's CSV) where a checkpoint is expected."""

    def mutate(config: dict, tmp: Path, demo: Path) -> None:
        setkey(key, str(demo / "train.csv"))(config, tmp, demo)

    return mutate


def output_under_a_file(config: dict, tmp: Path, demo: Path) -> None:
    """output_folder inside a file: no folder can be made there (validate sees it too)."""
    (tmp / "a-file").write_text("")
    config["output_setup"]["output_folder"] = str(tmp / "a-file" / "runs")


CASES: dict[str, tuple[Mutation, str]] = {
    "val_check_interval beyond an epoch": (
        setkey("train_setup.val_check_interval", 1000),
        "train_setup.val_check_interval: every 1000 training batches, but an epoch has ",
    ),
    "scheduler failing at its first step": (
        setkey("train_setup.scheduler_config", {"scheduler": "cosineannealinglr", "T_max": 0}),
        "CosineAnnealingLR with T_max=0 fails at its first step",
    ),
    "init_weights not a checkpoint": (
        config_file_as("train_setup.init_weights"),
        "train.csv: not a torch checkpoint file",
    ),
    "class label read as a boolean": (
        setkey("data_source.class_labels", ["water", False, "soil", "building"]),
        "data_source.class_labels[1]: Input should be a valid string, got false (YAML reads "
        "yes, no, on, off, true and false as booleans: quote the value)",
    ),
    "class label read as a number": (
        setkey("data_source.class_labels", ["water", 1, "soil", "building"]),
        "data_source.class_labels[1]: Input should be a valid string, got 1 (read as a number "
        'or a date: write it in quotes, as "1"; with --set, KEY=\'"1"\' or KEY=\'["1", "4"]\')',
    ),
    "output folder under a file": (
        output_under_a_file,
        "output_setup.output_folder: cannot write there: ",
    ),
    # --- syntax
    "json missing comma": (syntax('{"data_source": {"a": 1\n "b": 2}}'), ":2:2"),
    "yaml bad indent": (syntax("data_source:\n  a: 1\n b: 2\n", ".yaml"), ":3:2"),
    "top level list": (syntax("[1, 2]"), "mapping of sections"),
    "json key twice": (
        syntax('{"train_setup": {"epochs": 0, "epochs": 12}}'),
        "config.json: key 'epochs' is given twice in the same section",
    ),
    "yaml section twice": (
        syntax("train_setup:\n  lr: 0.1\n  epochs: 3\ntrain_setup:\n  epochs: 5\n", ".yaml"),
        "config.yaml:4: key 'train_setup' is given twice in the same section",
    ),
    "yaml nested key twice": (
        syntax("train_setup:\n  lr: 0.1\n  lr: 0.2\n", ".yaml"),
        "config.yaml:3: key 'lr' is given twice",
    ),
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
    "freeze_encoder_epochs -1": (
        both(
            setkey("train_setup.model_name", "resnet18"),
            setkey("train_setup.freeze_encoder_epochs", -1),
        ),
        "train_setup.freeze_encoder_epochs",
    ),
    "encoder_lr_factor 0": (
        both(
            setkey("train_setup.model_name", "resnet18"),
            setkey("train_setup.encoder_lr_factor", 0),
        ),
        "train_setup.encoder_lr_factor",
    ),
    # the demo's lightunet is one network, without an encoder
    "freeze without encoder": (
        setkey("train_setup.freeze_encoder_epochs", 2),
        "train_setup.freeze_encoder_epochs 2: model 'lightunet' has no encoder",
    ),
    "encoder lr without encoder": (
        setkey("train_setup.encoder_lr_factor", 0.1),
        "train_setup.encoder_lr_factor 0.1: model 'lightunet' has no encoder",
    ),
    "encoder lr with a shared eta_min": (
        both(
            setkey("train_setup.model_name", "resnet18"),
            setkey("train_setup.encoder_lr_factor", 0.1),
            setkey(
                "train_setup.scheduler_config", {"scheduler": "cosineannealinglr", "eta_min": 1e-5}
            ),
        ),
        "train_setup.scheduler_config.eta_min: CosineAnnealingLR takes one eta_min",
    ),
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
    # --- config files
    "config file missing": (config_path("{tmp}/nope/config.json"), "nope/config.json"),
    "config is a folder": (config_path("{demo}"), "config file not found"),
    "config file empty": (syntax(""), "config.json:1:1"),
    "config not utf-8": (syntax(b"\xff\xfe\x00{garbage\x80"), "config.json"),
    "lr NaN": (setkey("train_setup.lr", float("nan")), "train_setup.lr"),
    "image_bands empty": (setkey("data_source.image_bands", []), "data_source.image_bands"),
    "std zero": (
        setkey("data_source.normalization_weights", {"train": {"mean": [0.5] * 4, "std": [0] * 4}}),
        "normalization_weights.train.std",
    ),
    "class labels repeated": (
        setkey("data_source.class_labels", ["a", "a", "b", "c"]),
        "data_source.class_labels",
    ),
    "mask bands repeated": (
        setkey("data_source.mask_bands", [1, 1, 2, 3]),
        "data_source.mask_bands: values must be unique; repeated: 1",
    ),
    "version ..": (setkey("output_setup.version_name", ".."), "output_setup.version_name"),
    "experiment ../..": (setkey("output_setup.name_exp_log", "../.."), "name_exp_log"),
    # --- CSV files
    "missing val csv": (setkey("data_source.val_file", "/nonexistent/val.csv"), "val.csv"),
    "csv is a folder": (
        setkey("data_source.train_file", "/"),
        "data_source.train_file: /: is a folder, not a CSV file",
    ),
    "csv header names mask first": (
        csv_with(lambda tmp, demo: ["mask,image"] + [f"{m},{i}" for i, m in demo_rows(demo)]),
        "broken_train_file.csv, row 1: the header puts mask before image",
    ),
    "csv header only": (csv_with(lambda tmp, demo: ["image,mask"]), "broken_train_file.csv"),
    "csv not utf-8": (
        csv_bytes(b"\xff\xfe\x00\x80img.tif,\x81msk.tif\n"),
        "broken_train_file.csv, row 1: not UTF-8",
    ),
    "empty mask cell": (
        csv_with(lambda tmp, demo: [f"{demo_rows(demo)[0][0]},"]),
        "broken_train_file.csv, row 1",
    ),
    "missing mask": (
        csv_with(lambda tmp, demo: [f"{demo_rows(demo)[0][0]},{tmp}/nope_mask.tif"]),
        "nope_mask.tif",
    ),
    # --- rasters
    "image is a folder": (with_raster("folder"), "bad.tif"),
    "garbage mask": (with_raster("mask garbage"), "bad.tif"),
    "mask in another crs": (with_raster("mask other crs"), "bad.tif is in EPSG:4326 but image "),
    "mask off its image's grid": (with_raster("mask shifted"), "bad.tif is not on the grid of "),
    "mixed dtypes": (with_raster("mixed dtypes"), "pixel_range is required for uint16 images"),
    "mixed patch sizes": (with_raster("small pair"), "patch sizes"),
    "index mask among one-hot": (
        both(with_raster("mask index"), delkey("data_source.mask_bands")),
        "masks mix single-band class-index and multi-band one-hot masks",
    ),
}


def assert_rejected(code: int, err: str, culprit: str) -> None:
    """Exit 2, no traceback, every stderr line one ``error:`` naming a problem, culprit named."""
    assert code == 2, err
    assert culprit in err, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err


@pytest.mark.parametrize(
    "case",
    sorted(CASES),
)
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
    given_path = demo_config.pop("__path__", None)
    if demo_config.pop("__no_wandb__", False):
        monkeypatch.setitem(sys.modules, "wandb", None)
    if given_path:
        path = Path(given_path)
    elif raw:
        path = tmp_path / f"config{raw[1]}"
        text = raw[0]
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    else:
        path = write_config(tmp_path / "config.json", demo_config)
    assert_rejected(*run_cli(["validate", "-c", str(path)], capsys), culprit)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) + len(TRAIN_CASES) >= 80


# ---------------------------------------------------------------------------- output folders


def existing_version(config: dict, tmp: Path, demo: Path) -> None:
    run = Path(config["output_setup"]["output_folder"]) / "exp" / "v1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")


def live_run(config: dict, tmp: Path, demo: Path) -> None:
    """A run folder whose run.json names a live process of this host (pytest's parent)."""
    run = Path(config["output_setup"]["output_folder"]) / "exp" / "v1"
    run.mkdir(parents=True)
    pid = os.getppid()
    state = {"status": "running", "pid": pid, "host": socket.gethostname()}
    (run / "run.json").write_text(json.dumps({**state, "process_start": process_start(pid)}))
    config["train_setup"]["continue_training"] = True


def read_only_output(config: dict, tmp: Path, demo: Path) -> None:
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    # root ignores permissions: sysfs refuses new folders to everyone
    config["output_setup"]["output_folder"] = "/sys/landseg" if os.geteuid() == 0 else str(folder)


def output_is_a_file(config: dict, tmp: Path, demo: Path) -> None:
    (tmp / "a-file").write_text("")
    config["output_setup"]["output_folder"] = str(tmp / "a-file")


TRAIN_CASES: dict[str, tuple[Mutation, str]] = {
    "existing version": (existing_version, "already exists"),
    "continue a missing version": (
        setkey("train_setup.continue_training", True),
        "train_setup.continue_training: no run to continue",
    ),
    "continue an empty experiment": (
        both(
            setkey("train_setup.continue_training", True), setkey("output_setup.version_name", None)
        ),
        "train_setup.continue_training: no run to continue",
    ),
    "continue a live run": (live_run, f"still being trained (pid {os.getppid()} on this host)"),
    "read-only output folder": (read_only_output, "output_setup.output_folder: cannot write"),
    "output folder is a file": (output_is_a_file, "output_setup.output_folder: cannot write"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_bad_output_folder_is_rejected_by_train(
    case: str, demo_config: dict, demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["output_setup"].update(name_exp_log="exp", version_name="v1")
    mutation, culprit = TRAIN_CASES[case]
    mutation(demo_config, tmp_path, demo_dir)
    config = write_config(tmp_path / "config.json", demo_config)
    assert_rejected(*run_cli(["train", "-c", str(config)], capsys), culprit)
    assert not list(tmp_path.rglob("*.ckpt"))


# ---------------------------------------------------------------------------- pixels


def float_dataset(demo_config: dict, demo: Path, tmp: Path) -> list[Path]:
    """Point the config at float32 copies (0-1) of the demo images; returns the val images."""
    source = demo_config["data_source"]
    for split in ("train", "val"):
        lines = []
        for image, mask in demo_rows(demo, f"{split}.csv"):
            copy = tmp / "float" / Path(image).name
            with rasterio.open(image) as src:
                write_geotiff(copy, src.read().astype(np.float32) / 255, crs=src.crs)
            lines.append(f"{copy},{mask}")
        (tmp / f"{split}.csv").write_text("\n".join(lines) + "\n")
        source[f"{split}_file"] = str(tmp / f"{split}.csv")
    source.pop("test_file")
    return [Path(line.split(",")[0]) for line in (tmp / "val.csv").read_text().splitlines()]


def poison(image: Path, value: float) -> np.ndarray:
    """Set one pixel of ``image`` to ``value``; returns the original pixels."""
    with rasterio.open(image) as src:
        pixels, crs = src.read(), src.crs
    bad = pixels.copy()
    bad[0, 5, 7] = value
    write_geotiff(image, bad, crs=crs)
    return pixels


def pixel_run_config(demo_config: dict, tmp: Path, workers: int) -> Path:
    demo_config["train_setup"].update(epochs=2, checkpoint_every_n_steps=1)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v1", use_tensorboard=False, get_prediction=False
    )
    demo_config["device_setup"]["num_workers"] = workers
    return write_config(tmp / "config.json", demo_config)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error")]


def failed_train_line(config: Path, capsys: pytest.CaptureFixture) -> str:
    """`landseg train` on one thread must exit 2 with one error line and no traceback."""
    with single_thread():
        code, err = run_cli(["train", "-c", str(config)], capsys)
    assert code == 2, err
    assert "Traceback" not in err, err
    [line] = error_lines(err)
    return line


@pytest.mark.slow
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_pixel_stops_the_run_with_its_last_checkpoint_intact(
    value: float,
    demo_config: dict,
    demo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """The NaN is in a validation image: the first validation fails, after 4 training steps."""
    val_images = float_dataset(demo_config, demo_dir, tmp_path)
    original = poison(val_images[1], value)
    config = pixel_run_config(demo_config, tmp_path, workers=0)
    assert run_cli(["validate", "-c", str(config)], capsys)[0] == 0  # headers: nothing to see
    line = failed_train_line(config, capsys)
    assert val_images[1].name in line and "NaN or infinite" in line and "row 2" in line, line
    run = tmp_path / "runs" / "exp" / "v1"
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "failed" and "NaN" in state["error"]
    [step] = run.glob("checkpoints/*-step=*.ckpt")
    # step checkpoints skip the step a validation follows: the last good one is step 3 of 4
    assert torch.load(step, weights_only=True)["global_step"] == 3

    write_geotiff(val_images[1], original, crs="EPSG:32631")  # fixed: the run continues
    demo_config["train_setup"]["continue_training"] = True
    with single_thread():
        fixed = write_config(tmp_path / "fixed.json", demo_config)
        assert run_cli(["train", "-c", str(fixed)], capsys)[0] == 0
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_non_finite_pixel_read_by_a_worker_is_one_clean_line(
    demo_config: dict,
    demo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    val_images = float_dataset(demo_config, demo_dir, tmp_path)
    poison(val_images[1], float("nan"))
    config = pixel_run_config(demo_config, tmp_path, workers=2)
    line = failed_train_line(config, capsys)
    assert val_images[1].name in line and "NaN or infinite" in line, line


def test_out_of_range_mask_values_are_ignored(
    demo_config: dict, demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Class-index mask values >= the number of classes (here 9 and 200, with 4 labels) are
    not rejected; the pixels are ignored, never a class. Validation says so: it reads a
    sample of the masks, and too few labels would otherwise lose classes without a word."""
    from landseg.data.datamodule import CsvSegmentationDataModule

    lines = []
    for i, (image, onehot) in enumerate(demo_rows(demo_dir)):
        with rasterio.open(onehot) as src:
            classes = src.read().argmax(axis=0).astype(np.uint8)
        classes[:2, :3] = 9 if i % 2 else 200
        index_mask = tmp_path / f"index_{i}.tif"
        write_geotiff(index_mask, classes)
        lines.append(f"{image},{index_mask}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    source = demo_config["data_source"]
    source.update(train_file=str(tmp_path / "train.csv"), val_file=str(tmp_path / "train.csv"))
    source.pop("mask_bands")
    source.pop("test_file")
    demo_config["output_setup"]["get_prediction"] = False
    config = write_config(tmp_path / "config.json", demo_config)
    code, err = run_cli(["validate", "-c", str(config)], capsys)
    assert code == 0, err
    assert "data_source.class_labels names 4 classes, but mask " in err
    assert "holds class value 200: pixels of values 4-200 are ignored" in err
    from landseg.planning.prepare import prepare

    prepared = prepare(config, [])
    checked, summary = prepared.config, prepared.summary
    assert summary.n_classes == 4
    sample = CsvSegmentationDataModule(checked, summary).train_dataset[0]
    assert (sample["mask"][:2, :3] == -1).all()
    assert int(sample["mask"].max()) < 4


#: Configs with problems of several kinds at once: schema, registry names, parameter
#: signatures, rules between keys and data. Every one is reported in one run, one line each.
MIXED_CASES: dict[str, tuple[Mutation, list[str]]] = {
    "schema, loss, optimiser parameter, csv": (
        both(
            setkey("train_setup.lr", -1),
            setkey("train_setup.loss", "cee"),
            setkey("train_setup.optimizer_config.momentun", 0.9),
            setkey("data_source.train_file", "/nonexistent/train.csv"),
        ),
        [
            "train_setup.lr:",
            "train_setup.loss: unknown loss 'cee' (did you mean 'ce'?)",
            "train_setup.optimizer_config.momentun:",
            "/nonexistent/train.csv",
        ],
    ),
    "four schema errors in three sections": (
        both(
            setkey("train_setup.lr", -1),
            setkey("train_setup.epochs", 0),
            setkey("train_setup.loss", "cee"),
            setkey("device_setup.num_workers", -3),
        ),
        [
            "train_setup.lr:",
            "train_setup.epochs:",
            "train_setup.loss: unknown loss",
            "device_setup.num_workers:",
        ],
    ),
    "unknown key, model, scheduler parameter, augmentation, logger": (
        both(
            setkey("output_setup.get_predictions", True),
            setkey("train_setup.model_name", "resnet35"),
            setkey("train_setup.scheduler_config.patience", "two"),
            setkey("data_source.data_augmentation", {"train": ["rotation91"]}),
            setkey("output_setup.loggers", ["tensorbord"]),
        ),
        [
            "output_setup.get_predictions: unknown key (did you mean 'get_prediction'?)",
            "train_setup.model_name: unknown model 'resnet35'",
            "train_setup.scheduler_config.patience:",
            "data_source.data_augmentation.train[0]: unknown augmentation 'rotation91'",
            "output_setup.loggers[0]: unknown logger 'tensorbord'",
        ],
    ),
    "section missing a required key, data, strategy": (
        both(
            delkey("train_setup.model_name"),
            setkey("device_setup.strategy", "ddpp"),
            setkey("data_source.test_file", "/nonexistent/test.csv"),
        ),
        [
            "train_setup.model_name: required key is missing",
            "device_setup.strategy: unknown strategy 'ddpp'",
            "/nonexistent/test.csv",
        ],
    ),
    "class weights count, labels vs bands, data": (
        both(
            setkey("train_setup.class_imbalance", [1, 1]),
            setkey("data_source.class_labels", ["a", "b"]),
            setkey("data_source.val_file", "/nonexistent/val.csv"),
        ),
        [
            "train_setup.class_imbalance: 2 weights but there are 4 classes",
            "data_source.class_labels: 2 names but mask_bands selects 4 classes",
            "/nonexistent/val.csv",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(MIXED_CASES))
def test_every_problem_is_reported_at_once(
    case: str, demo_config: dict, demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mutation, culprits = MIXED_CASES[case]
    mutation(demo_config, tmp_path, demo_dir)
    path = write_config(tmp_path / "c.json", demo_config)
    code, err = run_cli(["validate", "-c", str(path)], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert all(line.startswith("error: ") for line in lines), err
    for culprit in culprits:  # each on a line of its own
        assert sum(culprit in line for line in lines) == 1, (culprit, err)
    assert len(lines) == len(culprits), err


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


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-3", 0.001),
        ("[1, 2]", [1, 2]),
        ('{"optimizer": "sgd"}', {"optimizer": "sgd"}),
        ("{optimizer: sgd, momentum: 0.9}", {"optimizer": "sgd", "momentum": 0.9}),
        ("run: 2", "run: 2"),  # YAML would read a mapping: a name keeps its text
        ("~", "~"),
        ("yes", True),
        ("unet", "unet"),
    ],
)
def test_set_values_are_json_then_yaml_then_text(text: str, value: object) -> None:
    from landseg.config.overrides import parse_override_value

    assert parse_override_value(text) == value


def test_json_and_yaml_read_the_same(demo_config: dict, tmp_path: Path) -> None:
    import yaml

    from landseg.config.load import load_config

    json_path = write_config(tmp_path / "c.json", demo_config)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(yaml.safe_dump(json.loads(json_path.read_text())))
    assert load_config(json_path) == load_config(yaml_path)


def test_a_yaml_merge_may_override_what_it_merges(tmp_path: Path) -> None:
    """``<<: *defaults`` then a key of its own is YAML's override, not a key given twice."""
    from landseg.config.load import read_config_file

    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {lr: 0.1, epochs: 3}\ntrain_setup:\n  <<: *base\n  lr: 0.2\n")
    assert read_config_file(path)["train_setup"] == {"lr": 0.2, "epochs": 3}


def test_names_yaml_reads_as_dates_or_numbers_are_the_names_written(
    demo_config: dict, tmp_path: Path
) -> None:
    """ODEON's experiment names are dates; YAML reads them as dates, --set 2 as a number."""
    import yaml

    from landseg.config.load import load_config

    demo_config["output_setup"].pop("name_exp_log", None)
    text = yaml.safe_dump(demo_config) + ""
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("output_setup:\n", "output_setup:\n  name_exp_log: 2022-06-17\n"))
    out = load_config(path, ["output_setup.version_name=2"]).output_setup
    assert (out.name_exp_log, out.version_name) == ("2022-06-17", "2")


def test_set_replaces_a_key_the_file_spells_the_odeon_way() -> None:
    """004 writes "class imbalance"; --set train_setup.class_imbalance=... replaces it."""
    from landseg.config.overrides import apply_overrides

    data = {"train_setup": {"class imbalance": [1, 1], "lr": 0.1}}
    apply_overrides(data, ["train_setup.class_imbalance=[1, 2]"])
    assert data == {"train_setup": {"lr": 0.1, "class_imbalance": [1, 2]}}


def test_a_tilde_in_config_and_csv_paths_is_the_home_folder(
    demo_config: dict, demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config is never passed through a shell: ``~/data/train.csv`` must not name a ``~``."""
    from landseg.config.load import load_config
    from landseg.data.csvfiles import read_pairs

    monkeypatch.setenv("HOME", str(demo_dir.parent))
    home_train = f"~/{demo_dir.name}/{Path(demo_config['data_source']['train_file']).name}"
    demo_config["data_source"]["train_file"] = home_train
    demo_config["output_setup"]["output_folder"] = "~/runs"
    path = write_config(tmp_path / "c.json", demo_config)
    config = load_config(path)
    assert config.data_source.train_file == demo_dir / Path(home_train).name
    assert config.output_setup.output_folder == demo_dir.parent / "runs"

    image, mask = (Path(cell).relative_to(demo_dir) for cell in demo_rows(demo_dir)[-1][:2])
    csv_path = tmp_path / "home_rows.csv"
    csv_path.write_text(f"~/{demo_dir.name}/{image},~/{demo_dir.name}/{mask}\n")
    pair = read_pairs(csv_path)[0]
    assert (pair.image, pair.mask) == (demo_dir / image, demo_dir / mask)
