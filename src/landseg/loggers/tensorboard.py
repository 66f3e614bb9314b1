"""One TensorBoard run per phase, so train and validation curves overlay under one tag.

ODEON keeps a TensorBoard logger per phase. Here a single Lightning logger owns the three
writers: ``train_loss`` goes to ``<root>/train`` as ``loss`` and ``val_loss`` to ``<root>/val`` as
``loss``, so TensorBoard draws both on the same chart, coloured by run. The config goes to
``<root>`` itself, as text and as an HParams session whose metrics are read from the phase
sub-runs. ``tensorboard --logdir <output_folder>`` then lists every
``<experiment>/<version>/tensorboard/<phase>``; resuming a run opens new event files in the same
folders, which TensorBoard reads as one run.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict, _sanitize_params
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

log = logging.getLogger(__name__)

PHASES = ("train", "val", "test")

#: Lightning appends this to a metric logged with both ``on_step`` and ``on_epoch``; the epoch
#: value is the one that overlays with the other phases' epoch values, so it loses the suffix.
_EPOCH_SUFFIX = "_epoch"

#: Metrics the HParams dashboard shows beside each run's config: (phase sub-run, tag).
HPARAMS_METRICS = (("train", "loss"), ("val", "loss"), ("val", "miou"), ("test", "miou"))


def tensorboard_command(logdir: Path) -> str:
    """The command that opens TensorBoard on ``logdir``, as the user can type it here.

    A virtual environment's scripts are not on PATH unless it is activated, so a bare
    ``tensorboard`` fails after ``make demo``: name the script installed beside this Python
    (``.venv/bin/tensorboard``, relative to the working folder when inside it) unless PATH
    already finds that same script.
    """
    script = Path(sys.executable).parent / "tensorboard"
    on_path = shutil.which("tensorboard")
    if on_path is not None and (not script.exists() or Path(on_path).resolve() == script.resolve()):
        program = "tensorboard"
    else:
        program = os.path.relpath(script) if script.is_relative_to(Path.cwd()) else str(script)
    return f"{program} --logdir {logdir}"


def split_metric(key: str) -> tuple[str, str]:
    """``"val_loss"`` -> ``("val", "loss")``; keys of no phase (``lr-SGD``) belong to train."""
    phase, sep, rest = key.partition("_")
    if sep and rest and phase in PHASES:
        return phase, rest.removesuffix(_EPOCH_SUFFIX) or rest
    return "train", key


def check_phase(phase: str) -> None:
    """Raise ``ValueError`` unless ``phase`` is train, val or test."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")


class _PhaseWriters:
    """SummaryWriters opened on first use; ``""`` is the run root (config, HParams session)."""

    def __init__(self, root: Path, writer_kwargs: dict[str, Any]):
        self.root = root
        self._kwargs = writer_kwargs
        self._open: dict[str, SummaryWriter] = {}

    def __getitem__(self, phase: str) -> SummaryWriter:
        if phase:  # "" is the root
            check_phase(phase)
        if phase not in self._open:
            self._open[phase] = SummaryWriter(log_dir=str(self.root / phase), **self._kwargs)
        return self._open[phase]

    def flush(self) -> None:
        for writer in self._open.values():
            writer.flush()

    def close(self) -> None:
        """Close every writer; a later ``[phase]`` opens a new event file in the same folder."""
        writers, self._open = self._open, {}
        for writer in writers.values():
            writer.close()

    def __getstate__(self) -> dict[str, Any]:
        # Open writers hold threads and file handles: a pickled copy (DDP spawn) reopens its own.
        return {**self.__dict__, "_open": {}}


class PhaseTensorBoardLogger(Logger):
    """A Lightning logger writing ``<root>/train``, ``<root>/val`` and ``<root>/test``.

    Metrics ``train_*``, ``val_*``, ``test_*`` go to their phase's run without the prefix (and
    without Lightning's ``_epoch`` suffix); anything else (learning rate, momentum, ``epoch``)
    goes to the train run. Writing happens on global rank 0 only.

    Args:
        root: the folder holding the phase runs, e.g. ``<run folder>/tensorboard``.
        name: experiment name; defaults to the name of the folder two levels above ``root``
            (``<output_folder>/<name_exp_log>/<version_name>/tensorboard``).
        version: version name; defaults to the name of ``root``'s parent folder.
        writer_kwargs: passed to every ``SummaryWriter`` (``flush_secs``, ``max_queue``).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        name: str | None = None,
        version: str | None = None,
        **writer_kwargs: Any,
    ):
        super().__init__()
        self._root = Path(root)
        self._name = name if name is not None else self._root.parent.parent.name
        self._version = version if version is not None else self._root.parent.name
        self._writers = _PhaseWriters(self._root, writer_kwargs)
        self._hparams_logged = False

    @property
    @override
    def name(self) -> str:
        return self._name

    @property
    @override
    def version(self) -> str:
        return self._version

    @property
    @override
    def root_dir(self) -> str:
        return str(self._root)

    @property
    @override
    def log_dir(self) -> str:
        return str(self._root)

    @property
    @override
    def save_dir(self) -> str:
        return str(self._root)

    @property
    @rank_zero_experiment
    def experiment(self) -> _PhaseWriters:
        """``experiment[phase]`` is that phase's SummaryWriter (a no-op object off rank 0)."""
        return self._writers

    def writer(self, phase: str) -> SummaryWriter:
        """The SummaryWriter of ``phase`` (train, val or test), for images, figures, histograms."""
        return self.experiment[phase]

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            phase, tag = split_metric(key)
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.writer(phase).add_scalar(tag, value, step)

    @override
    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """Write the flattened config once: a text table and an HParams session at the root."""
        if self._hparams_logged:
            return
        flat = _sanitize_params(_flatten_dict(_convert_params(_plain(params))))
        if not flat:
            return
        writer = self.experiment[""]
        table = "| parameter | value |\n|---|---|\n" + "\n".join(
            f"| {key} | {value} |" for key, value in sorted(flat.items())
        )
        writer.add_text("config", table, global_step=0)
        for summary in _hparams_session(flat):
            writer._get_file_writer().add_summary(summary)
        writer.flush()
        self._hparams_logged = True

    @override
    @rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: torch.Tensor | None = None) -> None:
        """Trace ``model`` on ``input_array`` into the train run; a failure is only a warning.

        Lightning calls this with no input for every fit; the graph is then left to
        :class:`~landseg.callbacks.weights.ModelGraph`, which knows the band count.
        """
        if input_array is None:
            return
        was_training = model.training
        model.eval()  # no batch-norm statistics update, no dropout while tracing
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings about data-dependent control flow
                writer = self.writer("train")
                try:
                    summary = graph_summary(model, input_array)
                except ImportError:  # torch moved its graph builder: add_graph, check and all
                    writer.add_graph(model, input_array)
                else:
                    writer._get_file_writer().add_graph(summary)
        except Exception as error:  # a model that cannot be traced must not stop training
            log.warning("model graph not written to TensorBoard: %s", error)
        finally:
            model.train(was_training)

    @override
    @rank_zero_only
    def save(self) -> None:
        self._writers.flush()

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._writers.close()


def graph_summary(model: torch.nn.Module, example: torch.Tensor) -> tuple[Any, Any]:
    """The ``(GraphDef, RunMetadata)`` that ``SummaryWriter.add_graph`` writes, traced once.

    ``add_graph`` calls ``torch.jit.trace`` with its default ``check_trace=True``, which traces
    the model a second time and runs both traces to compare them: most of its time (1 to 3 s
    for a resnet18 U-Net on a CPU, at every run's start), spent checking a drawing. This is
    ``add_graph``'s own code (torch's ``_pytorch_graph.graph``) without the check; the graph
    written is byte for byte the same.
    """
    from tensorboard.compat.proto.config_pb2 import RunMetadata
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.compat.proto.step_stats_pb2 import DeviceStepStats, StepStats
    from tensorboard.compat.proto.versions_pb2 import VersionDef
    from torch.utils.tensorboard._pytorch_graph import parse

    trace = torch.jit.trace(model, example, check_trace=False)
    graph = trace.graph
    torch._C._jit_pass_inline(graph)
    nodes = parse(graph, trace, example)
    stepstats = RunMetadata(
        step_stats=StepStats(dev_stats=[DeviceStepStats(device="/device:CPU:0")])
    )
    return GraphDef(node=nodes, versions=VersionDef(producer=22)), stepstats


def _plain(params: Any) -> Any:
    """Pydantic models (the landseg config) as plain JSON types; anything else unchanged."""
    return params.model_dump(mode="json") if hasattr(params, "model_dump") else params


def _hparams_session(flat: dict[str, Any]) -> list[Any]:
    """The three HParams summaries, with metrics looked up in the phase sub-runs.

    ``torch.utils.tensorboard`` can only name metrics of the same run; the plugin also accepts
    a ``group`` (a sub-run), which is what lets one session show train and val values.
    """
    from tensorboard.plugins.hparams.api_pb2 import MetricInfo, MetricName
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(flat, {})
    plugin_data = experiment.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(plugin_data.content)
    content.experiment.metric_infos.extend(
        MetricInfo(name=MetricName(group=group, tag=tag)) for group, tag in HPARAMS_METRICS
    )
    plugin_data.content = content.SerializeToString()
    return [experiment, start, end]


def logger_step(trainer: Any) -> int:
    """The step Lightning's own logging gives a value logged now, for pictures to sit beside it.

    During fit, Lightning logs a validation's metrics and a train epoch's metrics at the index
    of the last trained batch (``global_step - 1``: its loop counts the batch once it is
    done); elsewhere (a test after fit) at the number of trained batches. Figures, image grids
    and histograms use the same step, so TensorBoard shows them beside the scalars of the
    same validation.
    """
    step = int(trainer.global_step)
    state = getattr(trainer, "state", None)
    fitting = getattr(getattr(state, "fn", None), "value", None) == "fit"
    return max(step - 1, 0) if fitting else step


def find_phase_logger(trainer: Any) -> PhaseTensorBoardLogger | None:
    """The trainer's :class:`PhaseTensorBoardLogger`, or ``None`` (TensorBoard is turned off)."""
    for logger in trainer.loggers:
        if isinstance(logger, PhaseTensorBoardLogger):
            return logger
    return None
