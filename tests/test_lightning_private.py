"""The private parts of Lightning that landseg relies on, where Lightning has no public API.

pyproject.toml pins Lightning's minor version; each test here fails, naming the attribute and
the landseg module that uses it, when a Lightning release changes one of them, so that moving
the pin starts with a clear list of what to check.
"""

from __future__ import annotations

import inspect
import re
import signal
from pathlib import Path

import lightning
import pytest
import tomllib
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from landseg.core.signals import keep_lightning_off_signals

REPO = Path(__file__).resolve().parents[1]


def changed(what: str, where: str) -> str:
    return (
        f"Lightning {lightning.__version__}: {what} is gone or changed; landseg's {where} "
        "relies on it (Lightning has no public API for it). Adapt that module, then move the "
        "pin of lightning in pyproject.toml"
    )


def test_the_installed_lightning_is_the_pinned_minor_version() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.match(r"lightning\b", d)]
    match = re.fullmatch(r"lightning>=(\d+)\.(\d+),<(\d+)\.(\d+)", pin)
    assert match, f"pyproject.toml: {pin!r}; landseg pins Lightning's minor version"
    low, high = (int(match[1]), int(match[2])), (int(match[3]), int(match[4]))
    installed = tuple(int(part) for part in lightning.__version__.split(".")[:2])
    assert low <= installed < high, f"Lightning {lightning.__version__} installed, {pin} pinned"


def test_the_trainer_s_signal_connector_is_what_keeps_lightning_off_signals() -> None:
    """core/signals.py: without the patch the connector installs a SIGTERM handler; with it,
    none."""
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    connector = getattr(trainer, "_signal_connector", None)
    assert callable(getattr(connector, "register_signal_handlers", None)), changed(
        "Trainer._signal_connector.register_signal_handlers", "core/signals.py"
    )
    before = signal.getsignal(signal.SIGTERM)
    try:
        connector.register_signal_handlers()  # Lightning's own, unpatched
        assert signal.getsignal(signal.SIGTERM) is not before, changed(
            "the signal connector installing the SIGTERM handler", "core/signals.py"
        )
    finally:
        signal.signal(signal.SIGTERM, before)
    keep_lightning_off_signals(trainer)
    trainer._signal_connector.register_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("name", "parameters", "where"),
    [
        ("_should_save_on_train_epoch_end", ["trainer"], "callbacks (checkpoints, graceful_stop)"),
        ("_should_skip_saving_checkpoint", ["trainer"], "callbacks/checkpoints.py"),
        ("_save_last_checkpoint", ["trainer", "monitor_candidates"], "callbacks/checkpoints.py"),
        ("_monitor_candidates", ["trainer"], "callbacks/checkpoints.py"),
    ],
)
def test_model_checkpoint_s_save_decisions(name: str, parameters: list[str], where: str) -> None:
    method = getattr(ModelCheckpoint, name, None)
    assert callable(method), changed(f"ModelCheckpoint.{name}", where)
    found = list(inspect.signature(method).parameters)[1:]
    assert found == parameters, changed(f"ModelCheckpoint.{name}{tuple(found)}", where)


def test_the_csv_logger_s_writer(tmp_path: Path) -> None:
    """loggers/csv_logger.py appends to an existing metrics.csv through these."""
    where = "loggers/csv_logger.py"
    assert callable(getattr(ExperimentWriter, "_check_log_dir_exists", None)), changed(
        "ExperimentWriter._check_log_dir_exists", where
    )
    writer = ExperimentWriter(log_dir=str(tmp_path))
    for attribute in ("metrics_file_path", "metrics_keys"):
        assert hasattr(writer, attribute), changed(f"ExperimentWriter.{attribute}", where)
    logger = CSVLogger(tmp_path, name="", version="")
    for attribute in ("_experiment", "_fs"):
        assert hasattr(logger, attribute), changed(f"CSVLogger.{attribute}", where)


def test_ddp_strategy_builds_its_wrapper_from_its_ddp_kwargs() -> None:
    """training/trainer.py (find_unused_parameters for a frozen encoder) sets the flag in the
    built strategy's keyword arguments, which its DDP wrapper is made from when fitting starts."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = DDPStrategy(find_unused_parameters=False)
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    assert kwargs == {"find_unused_parameters": False}, changed(
        "DDPStrategy._ddp_kwargs", "training/trainer.py"
    )
    source = inspect.getsource(DDPStrategy._setup_model)
    assert "DistributedDataParallel(" in source and "**self._ddp_kwargs" in source, changed(
        "DDPStrategy._setup_model wrapping the model with **self._ddp_kwargs",
        "training/trainer.py",
    )
