"""Config file -> checked config and data summary: the one preparation pipeline.

``landseg validate``, ``train``, ``train --resume``, ``cv``, ``report``, the benchmarks and the
tests all call :func:`prepare`. It runs every check before any work and reports **every
problem in one pass**: the schema (pydantic), the names and parameters of each registry
(models, losses, optimisers, schedulers, augmentations, loggers, export formats), the rules
between sections, and the data (CSV files and raster headers), which is checked whenever
``data_source`` itself is valid. Each problem is one line naming its key, file or row.

Each rule is checked once, by the owner of the names it checks: this module only gathers
their ``*_problems`` functions. It sits above config, data, models and tasks and below
everything that trains, and imports neither Lightning's trainer nor segmentation-models-pytorch
or timm (for landseg's own models), so validation stays fast.

When the schema rejects part of a config, the parts it accepts are still checked: each
section is validated on its own, the keys the schema rejected are left out (their defaults
stand in), and the registry and data checks run on what remains. A section that cannot be
validated at all (a required key missing) is not checked further.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from landseg.config.load import read_config_file, validate_config
from landseg.config.overrides import apply_overrides
from landseg.config.schema import (
    DataSource,
    DeviceSetup,
    LandsegConfig,
    NormalizationWeights,
    OutputSetup,
    SplitStats,
    TrainSetup,
    band_names_problems,
    output_class_problems,
    path_from_config,
    prediction_problems,
)
from landseg.core.errors import ConfigError, DataError
from landseg.core.files import folder_problem
from landseg.data.augmentations import augmentation_problems
from landseg.data.checks import check_data
from landseg.data.summary import DataSummary
from landseg.launch.cluster import in_slurm_batch
from landseg.loggers.registry import logger_problems
from landseg.models.export import export_problems
from landseg.models.registry import model_name_notes, model_problems
from landseg.planning.pretrained import encoder_weights_problems
from landseg.runs.checkpoints import checkpoint_error_line, load_checkpoint
from landseg.tasks.finetune import finetune_problems
from landseg.tasks.losses import loss_problems
from landseg.tasks.optim import optimizer_problems, scheduler_problems

#: The sections checked on their own when the whole config does not validate.
SECTIONS: dict[str, type[BaseModel]] = {
    "data_source": DataSource,
    "train_setup": TrainSetup,
    "output_setup": OutputSetup,
    "device_setup": DeviceSetup,
}
#: Rounds of leaving out rejected keys before a section is given up.
MAX_ROUNDS = 10

log = logging.getLogger("landseg.config")


@dataclass(frozen=True)
class Prepared:
    """A config that passed every check, and what its data look like."""

    config: LandsegConfig
    summary: DataSummary


def read_source(
    source: str | Path | Mapping[str, Any], overrides: list[str] | None = None
) -> tuple[dict[str, Any], Path | None]:
    """The raw config (a file's content or a copy of a mapping) with ``--set`` overrides applied,
    and the file it came from (relative paths are relative to its folder)."""
    if isinstance(source, Mapping):
        raw, path = copy.deepcopy(dict(source)), None
    else:
        path = Path(source)
        raw = read_config_file(path)
    return apply_overrides(raw, overrides or []), path


def prepare(
    source: str | Path | Mapping[str, Any] | LandsegConfig,
    overrides: list[str] | None = None,
    *,
    device_check: bool = True,
    one_run: bool = True,
) -> Prepared:
    """Read, override, validate and check a config and its data; raise one error listing every
    problem (:class:`~landseg.core.errors.DataError` when they are all about the data,
    :class:`~landseg.core.errors.ConfigError` otherwise).

    ``source`` is a config file (JSON or YAML), a raw mapping (relative paths taken from the
    working directory), or a :class:`LandsegConfig` already validated (its registry and data
    checks still run). ``device_check``: whether the devices named exist on this machine
    (off for a config written on a login node for the compute nodes). ``one_run``: the config
    trains one run whose processes are the SLURM job's tasks (not a cv job's rows, whose
    tasks train one process each and test on their held-out groups).
    """
    if isinstance(source, LandsegConfig):
        config: LandsegConfig | None = source
        schema_lines: list[str] = []
        sections: dict[str, Any] = {name: getattr(source, name) for name in SECTIONS}
        base = Path.cwd()
    else:
        raw, path = read_source(source, overrides)
        base = path.resolve().parent if path is not None else Path.cwd()
        config, schema_lines, sections = _validate(raw, base, path)
    problems = schema_lines + _registry_problems(sections, job=not one_run)
    problems += _output_problems(sections) + _init_weights_problems(sections)
    device = sections.get("device_setup")
    if device_check and device is not None and not _rejected("device_setup", schema_lines):
        problems += host_device_problems(device)
        if one_run and sections.get("cross_validation") is None:
            problems += slurm_layout_problems(device)  # cv tasks train one process each
    summary: DataSummary | None = None
    data_lines: list[str] = []
    data = sections.get("data_source")
    if data is not None and not _rejected("data_source", schema_lines):
        try:
            summary = check_data(_config_for_data_checks(config, sections))
        except DataError as error:
            data_lines = error.problems
    n_classes = summary.n_classes if summary is not None else (data.n_classes() if data else None)
    problems += _class_count_problems(sections, n_classes, summary)
    if one_run and summary is not None:
        problems += _validation_interval_problems(sections, summary)
    problems += _pretrained_problems(sections, summary)
    if problems or data_lines:
        if not problems:
            raise DataError(data_lines)
        raise ConfigError(problems + data_lines)
    assert config is not None and summary is not None  # no problem: everything validated
    return Prepared(with_weights_normalization(config, summary, base), summary)


# ---------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class WeightsNormalization:
    """The mean and std per image band that a run's pretrained weights were trained with
    (0-1 range), where they were found, and which weights band each image band took."""

    origin: str
    mean: list[float]
    std: list[float]
    sources: list[str]
    band_names: list[str] | None

    def record(self, used: bool) -> dict[str, Any]:
        """What run.json says of it (``used``: the run normalises with it)."""
        names = self.band_names or [f"band {i + 1}" for i in range(len(self.mean))]
        return {
            "origin": self.origin,
            "used": used,
            "bands": [
                {"band": name, "from": source, "mean": m, "std": s}
                for name, source, m, s in zip(names, self.sources, self.mean, self.std, strict=True)
            ],
        }

    def line(self) -> str:
        names = self.band_names or [f"band {i + 1}" for i in range(len(self.mean))]
        pairs = ", ".join(f"{n} <- {s}" for n, s in zip(names, self.sources, strict=True))
        return (
            f"normalisation from the pretrained weights ({self.origin}): {pairs}; "
            "set data_source.normalization_weights to use other values"
        )


def normalization_from_weights(
    config: LandsegConfig, summary: DataSummary, base: Path | None = None
) -> WeightsNormalization | None:
    """The mean and std that ``model_params.encoder_weights`` carry, per image band (None:
    no pretrained weights, or their statistics are unknown without a download).

    The weights' band names are ``model_params.encoder_bands``, else the file's own; the
    image's are ``data_source.band_names``; see
    :func:`landseg.models.pretrained_stats.pretrained_normalization` for the mapping.
    """
    train = config.train_setup
    params = dict(train.model_params or {})
    if params.get("encoder_weights") in (None, False):
        return None  # checking a landseg U-Net's config imports neither smp nor timm
    from landseg.models.pretrained_stats import pretrained_normalization, weights_stats
    from landseg.models.registry import encoder_name

    stats = weights_stats(encoder_name(train.model_name, params), params["encoder_weights"], base)
    if stats is None:
        return None
    mean, std = stats.mean, stats.std
    if stats.pixel_units:  # torchgeo's statistics of raw pixels: to the 0-1 range
        if isinstance(summary.pixel_range, dict):
            raise ConfigError(
                f"model_params.encoder_weights: {params['encoder_weights']} gives statistics "
                "of raw pixels, which images of several dtypes "
                f"({', '.join(summary.pixel_range)}) do not share; give "
                "data_source.normalization_weights"
            )
        mean = [v / summary.pixel_range for v in mean]
        std = [v / summary.pixel_range for v in std]
    image_names = getattr(config.data_source, "band_names", None)  # where the key exists
    weights_names = params.get("encoder_bands") or stats.band_names
    try:
        bands = pretrained_normalization(
            summary.n_image_bands, image_names, weights_names, mean, std
        )
    except ValueError as error:
        log.warning("the pretrained weights' normalisation is not used: %s", error)
        return None
    names = [str(n) for n in image_names] if image_names else None
    return WeightsNormalization(stats.origin, bands.mean, bands.std, bands.sources, names)


def with_weights_normalization(
    config: LandsegConfig, summary: DataSummary, base: Path | None = None
) -> LandsegConfig:
    """``config`` normalised as its pretrained weights were, where it sets no
    ``data_source.normalization_weights`` (one line logged saying which band took what)."""
    if config.data_source.normalization_weights is not None:
        return config
    found = normalization_from_weights(config, summary, base)
    if found is None:
        return config
    log.info(found.line())
    weights = NormalizationWeights(train=SplitStats(mean=found.mean, std=found.std))
    data = config.data_source.model_copy(update={"normalization_weights": weights})
    return config.model_copy(update={"data_source": data})


def weights_normalization_record(
    config: LandsegConfig, summary: DataSummary
) -> dict[str, Any] | None:
    """run.json's ``normalization_from_weights``: the weights' statistics per band, and
    whether the run uses them (None: the weights carry none, or there are no weights)."""
    found = normalization_from_weights(config, summary)
    if found is None:
        return None
    weights = config.data_source.normalization_weights
    train = weights.train if weights is not None else None
    used = train is not None and list(train.mean) == found.mean and list(train.std) == found.std
    return found.record(used)


def _validation_interval_problems(sections: dict[str, Any], summary: DataSummary) -> list[str]:
    """An integer val_check_interval longer than an epoch: Lightning then validates across
    epochs, and what needs val_loss at each epoch's end (ReduceLROnPlateau, the checkpoints)
    fails after the first one."""
    train = sections.get("train_setup")
    if train is None or not isinstance(train.val_check_interval, int):
        return []
    device = sections.get("device_setup")
    processes = (device.process_count() if device is not None else None) or 1
    rows = summary.split_sizes.get("train", 0)
    batches = math.ceil(math.ceil(rows / processes) / train.batch_size)
    if train.val_check_interval <= batches:
        return []
    return [
        f"train_setup.val_check_interval: every {train.val_check_interval} training batches, "
        f"but an epoch has {batches} ({rows} training tiles, batch_size {train.batch_size}"
        f"{f', {processes} processes' if processes > 1 else ''}): at most {batches}, or a "
        "fraction of an epoch such as 0.5"
    ]


def _init_weights_problems(sections: dict[str, Any]) -> list[str]:
    """train_setup.init_weights that is no landseg checkpoint (read memory-mapped: cheap);
    whether its network fits is known once the model is built, at the start of training."""
    train = sections.get("train_setup")
    path = train.init_weights if train is not None else None
    if path is None or not path.is_file():
        return []  # none, or missing: TrainSetup's own check says so
    try:
        state = load_checkpoint(path)
    except Exception as error:
        return [f"train_setup.init_weights: {checkpoint_error_line(path, error)}"]
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        return [f"train_setup.init_weights: {path}: not a landseg checkpoint (no state_dict)"]
    return []


def _pretrained_problems(sections: dict[str, Any], summary: DataSummary | None) -> list[str]:
    """data_source.band_names against the images' bands, and model_params.encoder_weights
    (a weights name in no local cache, a file that is missing, unsafe, or of another
    architecture): one line each, before any run folder is made."""
    data, train = sections.get("data_source"), sections.get("train_setup")
    n_bands = summary.n_image_bands if summary is not None else None
    problems = []
    if data is not None and not data.image_bands:  # else DataSource.problems() said it
        problems += band_names_problems(data, n_bands)
    if data is None or train is None or problems:
        return problems
    if train.continue_training:
        # a continued run has its weights in its checkpoint: the file may be gone (a purged
        # scratch disk); a continue that finds no run starts anew and checks it then, before
        # its run.json is written
        return problems
    if n_bands is None and data.image_bands:
        n_bands = len(data.image_bands)
    whole = LandsegConfig.model_construct(data_source=data, train_setup=train)
    return encoder_weights_problems(whole, n_bands)


def _output_problems(sections: dict[str, Any]) -> list[str]:
    """output_setup.output_folder where no folder can be made (a file of that name...)."""
    out = sections.get("output_setup")
    problem = folder_problem(out.output_folder) if out is not None else None
    return [f"output_setup.output_folder: cannot write there: {problem}"] if problem else []


def prepare_config(
    source: str | Path | Mapping[str, Any], overrides: list[str] | None = None
) -> LandsegConfig:
    """The config alone, with every check that needs no data (cross-validation jobs and
    searches, whose data are checked through each job's rows)."""
    raw, path = read_source(source, overrides)
    base = path.resolve().parent if path is not None else Path.cwd()
    config, schema_lines, sections = _validate(raw, base, path)
    job = raw.get("cross_validation") is not None
    problems = schema_lines + _registry_problems(sections, job=job) + _output_problems(sections)
    data = sections.get("data_source")
    problems += _class_count_problems(sections, data.n_classes() if data else None, None)
    problems += _pretrained_problems(sections, None)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return config


# ---------------------------------------------------------------------------- schema


def _validate(
    raw: dict[str, Any], base: Path, path: Path | None
) -> tuple[LandsegConfig | None, list[str], dict[str, Any]]:
    """(the config or None, the schema's problem lines, each section that validates)."""
    try:
        config = validate_config(raw, path)
    except ConfigError as error:
        return None, error.problems, _lenient_sections(raw, base)
    return config, [], {name: getattr(config, name) for name in SECTIONS}


def _lenient_sections(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Each section validated on its own, leaving out the keys the schema rejects."""
    sections: dict[str, Any] = {}
    for name, model in SECTIONS.items():
        value = raw.get(name, {} if name == "device_setup" else None)
        section = _lenient(model, value)
        if section is not None:
            sections[name] = section
    # relative paths are relative to the config file's folder, as in a valid config
    if "data_source" in sections and "output_setup" in sections:
        whole = LandsegConfig.model_construct(
            data_source=sections["data_source"],
            train_setup=sections.get("train_setup"),
            output_setup=sections["output_setup"],
        )
        whole.resolve_paths(base)
    elif "data_source" in sections:
        data = sections["data_source"]
        for key in ("train_file", "val_file", "test_file"):
            value = getattr(data, key)
            if value is not None:
                setattr(data, key, path_from_config(value, base))
    return sections


def _lenient(model: type[BaseModel], value: Any) -> BaseModel | None:
    if not isinstance(value, dict):
        return None
    data = copy.deepcopy(value)
    for _ in range(MAX_ROUNDS):
        try:
            return model.model_validate(data)
        except ValidationError as error:
            removed = False
            for item in error.errors(include_url=False):
                loc = item["loc"]
                if loc and isinstance(loc[0], str) and loc[0] in data:
                    del data[loc[0]]
                    removed = True
            if not removed:  # a required key is missing, or a rule between keys
                return None
    return None


def _rejected(section: str, schema_lines: list[str]) -> bool:
    """Whether the schema rejected anything in ``section``."""
    return any(line.startswith((f"{section}.", f"{section}:")) for line in schema_lines)


# ---------------------------------------------------------------------------- registries


def _registry_problems(sections: dict[str, Any], *, job: bool = False) -> list[str]:
    """The problems of every registry name and parameter, and of the rules between keys.

    ``job``: the config is a cross-validation job's (or a search's), whose tasks each test
    on their held-out groups."""
    problems: list[str] = []
    data: DataSource | None = sections.get("data_source")
    train: TrainSetup | None = sections.get("train_setup")
    out: OutputSetup | None = sections.get("output_setup")
    device: DeviceSetup | None = sections.get("device_setup")
    if data is not None:
        problems += data.problems()
        if data.data_augmentation is not None:
            problems += augmentation_problems(data.data_augmentation.train)
    if train is not None:
        problems += train.problems()
        problems += model_problems(train.model_name, train.model_params, None)
        for note in model_name_notes(train.model_name):
            log.warning(note)
        optimizer, scheduler = train.optimizer_config, train.scheduler_config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch deprecation notes on dummy schedulers
            problems += optimizer_problems(optimizer.optimizer, optimizer.params, train.lr)
            problems += scheduler_problems(
                scheduler.scheduler,
                scheduler.params,
                train.lr,
                train.epochs,
                train.encoder_lr_factor,
            )
        problems += finetune_problems(
            train.model_name, train.freeze_encoder_epochs, train.encoder_lr_factor
        )
        problems += export_problems(train.export_checkpoint)
    if out is not None:
        problems += logger_problems(out.logger_names(), _logger_keys(out))
    if data is not None and out is not None:
        problems += prediction_problems(data, out, tasks_have_test=job)
    if device is not None:
        problems += device.problems()
    return problems


def host_device_problems(device: DeviceSetup) -> list[str]:
    """The devices ``device_setup`` names that this machine does not have."""
    if device.problems():
        return []  # malformed names or ids: reported already
    import torch

    args = device.lightning_args()
    accelerator, devices = args["accelerator"], args["devices"]
    hint = "; or validate with --no-device-check where the job will run on other machines"
    cuda = torch.cuda.is_available()
    if accelerator == "auto" and isinstance(devices, list) and not cuda:
        # Lightning's auto picks the CPU here, which takes a process count, not device ids
        return [
            f"device_setup.device: GPU ids {devices} given, but this machine has no CUDA GPU "
            f"(accelerator auto picks the CPU here): use device 0 for the CPU{hint}"
        ]
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda):
        count = torch.cuda.device_count() if cuda else 0
        if count == 0:
            return [
                f"device_setup.accelerator: {device.accelerator!r}, but this machine has no "
                f"CUDA GPU (torch {torch.__version__} sees none): use cpu{hint}"
            ]
        if isinstance(devices, list) and any(i >= count for i in devices):
            missing = [i for i in devices if i >= count]
            return [
                f"device_setup.device: GPU {missing[0]} does not exist here; this machine has "
                f"{count} (ids 0..{count - 1}){hint}"
            ]
        if isinstance(devices, int) and devices > count:
            return [f"device_setup.device: {devices} GPUs asked, this machine has {count}{hint}"]
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda)
    if device.precision == "16-mixed" and on_cpu:
        # Lightning would silently train in bfloat16 there, and run.json say float16
        return [
            "device_setup.precision: '16-mixed' (float16) is for GPUs; this run trains on the "
            f"CPU: use 'bf16-mixed', or 'auto'{hint}"
        ]
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return [f"device_setup.accelerator: 'mps', but this machine has no Apple GPU{hint}"]
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        return [f"device_setup.accelerator: 'tpu', but torch_xla is not installed here{hint}"]
    return []


def slurm_layout_problems(
    device: DeviceSetup, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Where ``device_setup`` and the SLURM job it runs in disagree on the processes.

    Under SLURM every training process is a SLURM task (``srun`` starts them, Lightning does
    not), so the devices per node must be the job's tasks per node and ``num_nodes`` its
    nodes; Lightning would otherwise stop with a traceback, or wait for ranks that never come.
    """
    env = os.environ if environ is None else environ
    if device.problems() or not in_slurm_batch(env):
        return []
    devices = device.lightning_args()["devices"]
    count = len(devices) if isinstance(devices, list) else devices
    problems = []
    ntasks = env.get("SLURM_NTASKS", "1")
    if ntasks.isdigit() and int(ntasks) > 1 and "SLURM_NTASKS_PER_NODE" not in env:
        # Lightning stops with a traceback: it needs the tasks per node, not their total
        return [
            f"device_setup: this SLURM job runs {ntasks} tasks given as --ntasks alone; "
            "Lightning needs them per node: submit with --ntasks-per-node (and --nodes), "
            "one task per training process"
        ]
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # "4(x2)": 4 on 2 nodes
    if isinstance(count, int) and per_node.isdigit() and int(per_node) != count:
        what = "device" if device.lightning_args()["accelerator"] != "cpu" else "num_processes"
        problems.append(
            f"device_setup.{what}: {count} training processes per node, but this SLURM job "
            f"runs {per_node} tasks per node (--ntasks-per-node); under SLURM each process is "
            f"a task that srun starts: make them equal"
        )
    nodes = env.get("SLURM_NNODES", "")
    if nodes.isdigit() and int(nodes) != device.num_nodes:
        problems.append(
            f"device_setup.num_nodes: {device.num_nodes}, but this SLURM job has {nodes} "
            "nodes (--nodes): make them equal"
        )
    return problems


def _logger_keys(out: OutputSetup) -> list[str] | None:
    """The key each logger name came from: ``loggers[i]``, or ODEON's ``use_<name>``."""
    if out.loggers is not None:
        return None
    return [f"output_setup.use_{name}" for name in out.logger_names()]


def _class_count_problems(
    sections: dict[str, Any], n_classes: int | None, summary: DataSummary | None
) -> list[str]:
    """The rules that need the number of classes (the loss's class weights, the colours of the
    class maps) and the model against the tile size, once they are known."""
    out: OutputSetup | None = sections.get("output_setup")
    problems = output_class_problems(out, n_classes) if out is not None else []
    train: TrainSetup | None = sections.get("train_setup")
    if train is None:
        return problems
    problems += loss_problems(train.loss, train.class_imbalance, n_classes)
    if summary is not None and not model_problems(train.model_name, train.model_params, None):
        problems += model_problems(train.model_name, train.model_params, summary.patch_size)
    return problems


def _config_for_data_checks(config: LandsegConfig | None, sections: dict[str, Any]) -> Any:
    """The config the data checks read: the whole one, or the valid sections with defaults."""
    if config is not None:
        return config
    return LandsegConfig.model_construct(
        data_source=sections["data_source"],
        train_setup=sections.get("train_setup") or TrainSetup.model_construct(),
    )
