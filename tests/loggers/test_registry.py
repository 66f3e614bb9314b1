"""Loggers are registry entries: one entry adds a logger; the run's own files need none."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger

from landseg.callbacks.run_logger import read_scalars
from landseg.cli.main import main
from landseg.config.schema import OutputSetup
from landseg.core.registry import Entry
from landseg.loggers.registry import LOGGERS, build_loggers, image_writers_of, logger_problems
from landseg.loggers.tensorboard import PhaseTensorBoardLogger
from landseg.runs.folder import RunFolder
from tests.helpers import write_config


class RecordingLogger(Logger):
    """A logger a user might add: it keeps what it is given, in memory."""

    instances: ClassVar[list[RecordingLogger]] = []

    def __init__(self, run: RunFolder):
        super().__init__()
        self.run = run
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.images: list[tuple[str, str, tuple[int, ...], int]] = []
        RecordingLogger.instances.append(self)

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def record_image(logger: Any, phase: str, tag: str, rgb: np.ndarray, step: int) -> None:
    logger.images.append((phase, tag, rgb.shape, step))


@pytest.fixture
def recording_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registry entry that adds the logger (removed after the test)."""
    entry = Entry(
        "recording",
        RecordingLogger,
        {"logger_class": f"{__name__}.RecordingLogger", "images": record_image},
    )
    monkeypatch.setitem(LOGGERS._entries, "recording", entry)
    RecordingLogger.instances.clear()


def test_logger_names_follow_odeon_keys_unless_loggers_is_set(tmp_path: Path) -> None:
    out = OutputSetup(output_folder=tmp_path)
    assert out.logger_names() == ["tensorboard"]
    assert OutputSetup(output_folder=tmp_path, use_wandb=True).logger_names() == [
        "tensorboard",
        "wandb",
    ]
    assert OutputSetup(output_folder=tmp_path, use_tensorboard=False).logger_names() == []
    chosen = OutputSetup(output_folder=tmp_path, use_tensorboard=True, loggers=["csv"])
    assert chosen.logger_names() == ["csv"]


def test_logger_problems_name_their_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert logger_problems(["tensorboard", "csv"]) == []
    assert logger_problems(["tensorbord"]) == [
        "output_setup.loggers[0]: unknown logger 'tensorbord' (did you mean 'tensorboard'?); "
        "valid: csv, tensorboard, wandb"
    ]
    assert logger_problems(["csv", "csv"]) == [
        "output_setup.loggers: each logger once; repeated: csv"
    ]
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    assert logger_problems(["wandb"], ["output_setup.use_wandb"]) == [
        "output_setup.use_wandb: the wandb package is not installed; install landseg[wandb] "
        "or do without 'wandb'"
    ]


def test_built_loggers_and_which_take_images(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    tensorboard, csv_logger = build_loggers(["tensorboard", "csv"], run)
    assert isinstance(tensorboard, PhaseTensorBoardLogger)
    assert isinstance(csv_logger, CSVLogger)
    assert Path(csv_logger.log_dir) == run.csv_logs
    writers = image_writers_of([tensorboard, csv_logger])
    assert len(writers) == 1  # CSV takes no image
    writers[0]("val", "picture", np.zeros((4, 5, 3), np.uint8), 3)
    tensorboard.save()
    assert list((run.tensorboard / "val").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_new_logger_is_one_registry_entry(
    recording_entry: None, demo_config: dict, tmp_path: Path
) -> None:
    demo_config["train_setup"].update(epochs=2, batch_size=8)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v1", loggers=["recording", "csv"], get_prediction=False
    )
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 0
    (logger,) = RecordingLogger.instances
    val_steps = [step for step, metrics in logger.metrics if "val_loss" in metrics]
    assert val_steps == [1, 3]  # two epochs of two batches: Lightning's steps
    images = {(phase, tag, step) for phase, tag, _, step in logger.images}
    assert {("val", "confusion_val", 3), ("val", "per_class_val", 3)} <= images
    assert ("val", "samples/image_mask_prediction", 3) in images
    run = tmp_path / "runs" / "exp" / "v1"
    assert not (run / "tensorboard").exists()
    with open(run / "csv_logs" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_loss")]
    assert [int(row["step"]) for row in rows] == [1, 3]


def labelled_pixels(data_source: dict[str, Any]) -> int:
    """Pixels of the validation masks that have a class (one-hot: some band is 1)."""
    import rasterio

    csv_file = Path(data_source["val_file"])
    total = 0
    for _image, mask in csv.reader(csv_file.read_text().splitlines()):
        with rasterio.open(csv_file.parent / mask) as src:
            total += int((src.read() == 1).any(axis=0).sum())
    return total


@pytest.mark.slow
def test_without_tensorboard_the_run_files_and_the_report_remain(
    demo_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo_config["train_setup"].update(epochs=2, batch_size=8)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v1", use_tensorboard=False, get_prediction=False
    )
    assert main(["train", "-c", str(write_config(tmp_path / "c.json", demo_config))]) == 0
    run = RunFolder(tmp_path / "runs" / "exp" / "v1")
    out = capsys.readouterr().out
    assert "TensorBoard" not in out and not run.tensorboard.exists()
    rows = read_scalars(run.path)
    assert [(r["phase"], r["step"]) for r in rows if r["phase"] == "val"] == [
        ("val", 2),
        ("val", 4),
    ]
    with np.load(run.arrays / "confusion_val.npz") as saved:
        assert saved["steps"].tolist() == [2, 4]
        assert int(saved["values"][-1].sum()) == labelled_pixels(demo_config["data_source"])
    for name in ("confusion_val", "confusion_normalized_val", "per_class_val", "learning_curves"):
        assert (run.figures / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert main(["report", str(run.path), "--samples", "2"]) == 0
    page = (run.report / "index.html").read_text()
    assert page.count("<img ") == 5  # curves, confusion (2), per class, samples


def test_the_csv_logger_keeps_the_rows_of_earlier_launches(
    demo_config: dict, tmp_path: Path
) -> None:
    """Lightning's CSV writer deleted metrics.csv when a run was continued."""
    demo_config["train_setup"].update(epochs=1, batch_size=8)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v", loggers=["csv"], get_prediction=False
    )
    assert main(["train", "-c", str(write_config(tmp_path / "a.json", demo_config))]) == 0
    metrics = tmp_path / "runs" / "exp" / "v" / "csv_logs" / "metrics.csv"
    first = metrics.read_text().splitlines()
    demo_config["train_setup"].update(epochs=2, continue_training=True)
    assert main(["train", "-c", str(write_config(tmp_path / "b.json", demo_config))]) == 0
    rows = list(csv.DictReader(metrics.open()))
    assert metrics.read_text().splitlines()[: len(first)] == first  # kept, byte for byte
    epochs = {row["epoch"] for row in rows if row.get("val_loss")}
    assert epochs == {"0", "1"}
