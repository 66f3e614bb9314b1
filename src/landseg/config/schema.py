"""The config models: ODEON's train-tool JSON, key for key, plus landseg's extensions.

Every key of ODEON's train tool keeps its documented name, type and default, so an existing ODEON
config runs
unchanged. Rules that need only the config live here (validators, and the ``problems()``
methods of sections); the rules of registry names live with their registries, the rules of the
data in :mod:`landseg.data.checks`, and :mod:`landseg.planning.prepare` runs them all.
"""

from __future__ import annotations

import datetime
import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from landseg.config.choices import (
    OUTPUT_TYPES,
    class_map_types,
    describe,
    describe_formats,
    literal,
)
from landseg.config.cross_validation import CrossValidation
from landseg.config.search import Search
from landseg.core.registry import unknown_name_message
from landseg.core.signals import signal_numbers

PositiveInt = Annotated[int, Field(ge=1)]
Band = Annotated[int, Field(ge=1, description="1-based band index, as in rasterio")]
_HEX_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")


class StrictModel(BaseModel):
    """Rejects unknown keys, so a misspelt key is an error and not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


if TYPE_CHECKING:
    OutputTypeName = str
else:  # Literal["bit", "classes", ...]: the names of landseg.config.choices.OUTPUT_TYPES
    OutputTypeName = literal(OUTPUT_TYPES)

# --------------------------------------------------------------------------- data_source


class SplitStats(StrictModel):
    """Per-band mean and standard deviation, in the 0-1 range."""

    mean: list[float] = Field(min_length=1, description="Per-band mean, in the 0-1 range.")
    std: list[Annotated[float, Field(gt=0)]] = Field(
        min_length=1, description="Per-band standard deviation (> 0), in the 0-1 range."
    )

    @model_validator(mode="after")
    def _same_length(self) -> SplitStats:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}; "
                "give one of each per image band"
            )
        return self


class NormalizationWeights(StrictModel):
    """Mean/std per split. A split without stats uses the train stats, else dtype scaling."""

    train: SplitStats | None = None
    val: SplitStats | None = None
    test: SplitStats | None = None

    def for_split(self, split: str) -> SplitStats | None:
        return getattr(self, split) or self.train


class DataAugmentation(StrictModel):
    """Augmentation names per split. ODEON's train tool: augmentation applies to the training set
    only."""

    train: list[str] = Field(
        default_factory=list,
        description="Names from: rotation90, rotation, radiometry (see the augmentations).",
    )
    val: list[str] = Field(default_factory=list, description="Must stay empty (train only).")
    test: list[str] = Field(default_factory=list, description="Must stay empty (train only).")

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("val", "test")
    @classmethod
    def _train_only(cls, value: list[str]) -> list[str]:
        if value:
            raise ValueError(
                "data augmentation applies to the train split only (ODEON rule); "
                "leave val and test empty"
            )
        return value


Resolution = float | list[float]


class Windows(StrictModel):
    """landseg: windows drawn from whole scenes (rows ``image,labels[,aoi]``; docs/scenes.md)."""

    size: PositiveInt = Field(description="Side of a square window, in pixels.")
    stride: PositiveInt | None = Field(
        default=None,
        description="Step of the validation and test grid, in pixels (at most size, so the "
        "grid covers every pixel); default size. A last window flush with the far edge covers "
        "a remainder; pixels two windows share are counted once, in the first.",
    )
    samples_per_epoch: PositiveInt | None = Field(
        default=None,
        description="Random windows trained per epoch, drawn from the seed, the epoch and the "
        "sample's index alone (exact resume, any number of workers). Default: train on the "
        "grid's windows, each once per epoch, as on tiles cut on that grid.",
    )
    max_nodata: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Largest share of a training window that may be image nodata or outside "
        "the AOI; windows beyond it are drawn again.",
    )

    @property
    def step(self) -> int:
        """The grid's stride (``stride`` or, by default, ``size``)."""
        return self.stride or self.size

    @model_validator(mode="after")
    def _stride_covers(self) -> Windows:
        if self.stride is not None and self.stride > self.size:
            raise ValueError(
                f"stride {self.stride} is larger than size {self.size}: the grid would skip "
                "pixels; use a stride of at most size"
            )
        return self


class DataSource(StrictModel):
    """Where the data is and how to read it (ODEON's train tool, section Data source)."""

    train_file: Path = Field(
        description="CSV of `image,mask` rows for training; paths relative to the CSV's folder."
    )
    val_file: Path | None = Field(
        default=None,
        description="CSV for validation. Without it, percentage_val of train_file is held out.",
    )
    test_file: Path | None = Field(
        default=None, description="CSV for the test split, evaluated after fitting."
    )
    percentage_val: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Share of train_file held out for validation when val_file is absent; "
        "the split is reproducible from train_setup.random_seed.",
    )
    image_bands: list[Band] | None = Field(
        default=None, min_length=1, description="1-based image bands to use; default all."
    )
    band_names: list[str] | None = Field(
        default=None,
        min_length=1,
        description="landseg: names of the bands the model reads (those image_bands selects, "
        "in that order; e.g. [red, green, blue, nir]), one per band. With the pretrained "
        "weights' band names (model_params.encoder_bands, or the weights file's metadata) a "
        "band of both takes its pretrained kernel; see model_params.",
    )
    mask_bands: list[Band] | None = Field(
        default=None,
        min_length=1,
        description="1-based mask bands, one per class (one-hot masks); default all. "
        "Ignored for single-band class-index masks.",
    )
    class_labels: list[str] | None = Field(
        default=None,
        min_length=1,
        description='One name per class; default "class 1" .. "class n".',
    )
    resolution: Resolution | dict[Literal["train", "val", "test"], Resolution] | None = Field(
        default=None,
        description="Pixel size, for the whole dataset or per split (recorded, not resampled).",
    )
    normalization_weights: NormalizationWeights | None = Field(
        default=None,
        description="Mean/std per split in the 0-1 range. Default: the pretrained encoder "
        "weights' own where they carry them (see docs/pretrained.md; run.json's "
        "normalization_from_weights says which band took what), else scaling by the dtype's "
        "range alone.",
    )
    data_augmentation: DataAugmentation | None = Field(
        default=None, description="Augmentations per split (train only)."
    )
    pixel_range: float | dict[str, float] | None = Field(
        default=None,
        description="landseg: the pixel value that maps to 1.0 before mean/std normalisation. "
        "Default: 255 for uint8, 1.0 (used as is) for float rasters; required for other "
        "integer types (uint16, int16, ...), which are never silently divided by 255. One "
        'number for every image, or a value per dtype ({"uint16": 4095}; dtypes not named '
        "keep their default), which images of several dtypes need.",
    )
    ignore_index: int | None = Field(
        default=None,
        description="landseg: a class-index mask value to ignore besides the mask's nodata.",
    )
    cache: Literal["none", "memory", "disk"] = Field(
        default="disk",
        description="landseg: keep every tile as first decoded (before scaling and "
        "augmentation, which still run on every read), so that later epochs skip decoding. "
        "disk: one file per tile in cache_dir, shared by the runs of the output folder, "
        "workers and ranks, kept for continued runs, redone when a raster changes, read "
        "through the page cache (no process memory); memory: the train and val tiles of each "
        "training process in RAM, refused when they do not fit; none: decode every read. "
        "Results are identical either way (design.md, section Data cache).",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="landseg: the disk cache's folder; default "
        "`<output_folder>/.landseg-cache`. Deleting it is always safe (tiles are decoded again).",
    )
    cache_limit_gb: float = Field(
        default=20.0,
        gt=0,
        description="landseg: the most the cache may hold, in GB (10^9 bytes). disk: no tile "
        "is added beyond it, nor when the disk would keep less than 10 % free (tiles left "
        "out are decoded every time); memory: the run is refused when the tiles need more, "
        "or more than half the memory available.",
    )

    windows: Windows | None = Field(
        default=None,
        description="landseg: train from whole scenes: every row of the CSV files is then a "
        "scene `image,labels[,aoi]` read window by window (a tile is a scene of one window). "
        "See docs/scenes.md.",
    )
    label_field: str | None = Field(
        default=None,
        description="landseg: the attribute of vector labels holding each polygon's class, as "
        "a 0-based index or a name from class_labels.",
    )
    label_layer: str | None = Field(
        default=None,
        description="landseg: the layer of vector label files with several; default the only one.",
    )
    label_background: str | int = Field(
        default="ignore",
        description="landseg: the class of pixels inside the AOI that no polygon covers: a name "
        'from class_labels, a 0-based index, or "ignore" (not labelled).',
    )
    label_all_touched: bool = Field(
        default=False,
        description="landseg: burn every pixel a polygon touches (default: the pixels whose "
        "centre it covers). Where polygons overlap, the later feature of the file wins.",
    )

    def n_classes(self) -> int | None:
        """The number of classes when the config alone tells it (else the data does)."""
        if self.mask_bands:
            return len(self.mask_bands)
        if self.class_labels:
            return len(self.class_labels)
        return None

    def problems(self) -> list[str]:
        """Rules between keys of this section, one line each."""
        labels, bands = self.class_labels, self.mask_bands
        problems = []
        if labels and bands and len(labels) != len(bands):
            problems.append(
                f"data_source.class_labels: {len(labels)} names but mask_bands selects "
                f"{len(bands)} classes"
            )
        problems += band_names_problems(self, len(self.image_bands or []) or None)
        return problems

    @field_validator("pixel_range")
    @classmethod
    def _pixel_ranges(cls, value: float | dict[str, float] | None) -> Any:
        """Values above 0; per dtype, numeric dtype names (uint8, uint16, int16, float32...)."""
        import numpy as np

        values = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(not v > 0 for v in values):
            raise ValueError("every value must be greater than 0")
        for name in value if isinstance(value, dict) else ():
            try:
                kind = np.dtype(name)
            except TypeError:
                kind = None
            if kind is None or kind.name != name or kind.kind not in "uif":
                raise ValueError(
                    f"{name!r} is not a raster dtype (uint8, uint16, int16, float32..)"
                )
        return value

    @field_validator("class_labels", "mask_bands", "band_names")
    @classmethod
    def _no_repeats(cls, value: list[Any] | None) -> list[Any] | None:
        """A repeated label is ambiguous; a repeated mask band makes two classes of one band."""
        if value is not None and len(set(value)) != len(value):
            dupes = sorted({str(v) for v in value if value.count(v) > 1})
            raise ValueError(f"values must be unique; repeated: {', '.join(dupes)}")
        return value


# --------------------------------------------------------------------------- train_setup


class OptimizerConfig(BaseModel):
    """``optimizer`` names the optimiser; every other key is passed to its constructor."""

    model_config = ConfigDict(extra="allow")

    optimizer: str = Field(
        default="adam",
        description="adam, radam, adamax, sgd, rmsprop or adamw; other keys are its "
        "parameters (checked against the torch.optim signature). adam, adamw and sgd use "
        "torch's fused kernel unless fused, foreach, differentiable or capturable is given.",
    )

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SchedulerConfig(BaseModel):
    """``scheduler`` names the scheduler; every other key is passed to its constructor."""

    model_config = ConfigDict(extra="allow")

    scheduler: str = Field(
        default="reducelronplateau",
        description="reducelronplateau, cycliclr, cosineannealinglr or "
        "cosineannealingwarmrestarts; other keys are its parameters.",
    )

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EarlyStopping(StrictModel):
    """Stop when the monitored metric stops improving; the direction follows the metric."""

    monitor: Literal["val_loss", "val_miou"] = Field(
        default="val_loss", description="val_loss (minimised) or val_miou (maximised)."
    )
    patience: int = Field(default=30, ge=0, description="Validations without improvement.")
    min_delta: float = Field(default=0.0, ge=0, description="Smallest change that counts.")

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.monitor == "val_loss" else "max"


class TrainSetup(StrictModel):
    """Model and optimisation (ODEON's train tool, section Train setup)."""

    model_name: str = Field(
        description="unet, lightunet, resnet18/34/50/101/152, deeplab, or "
        "smp:<Architecture> (any segmentation-models-pytorch architecture)."
    )
    model_params: dict[str, Any] = Field(
        default_factory=dict,
        description="landseg: extra model options (e.g. decoder_mode, output_stride, "
        "encoder_name, encoder_weights); checked against the model. A model starts from "
        "random weights unless encoder_weights is set or init_weights names a file. "
        "encoder_weights (models with an smp encoder) is the path of a weights file "
        "(.pt/.pth/.bin/.ckpt/.safetensors: a state dict, a timm, Lightning or landseg "
        "checkpoint; relative to the config file's folder, ~ allowed; loaded weights_only) "
        "or smp's weights name (imagenet..., true for a tu- timm encoder), read from the "
        "local Hugging Face or torch hub cache only: nothing is downloaded. Keys are matched "
        "after removing module., model., encoder., backbone., _orig_mod. and "
        "encoder_weights_prefix; fewer than half of the encoder's tensors, or another shape "
        "than the first convolution's, is refused. encoder_bands: the weights' band names "
        "(else the file's band_names metadata); with data_source.band_names, bands of both "
        "take their pretrained kernels, the others the mean kernel, all times M/N (M "
        "weights bands, N image bands); without names, image band i takes pretrained band "
        "i mod M, times M/N (one band: their sum), as smp does.",
    )
    epochs: PositiveInt = Field(default=1000, description="Number of epochs.")
    batch_size: PositiveInt = Field(default=3, description="Samples per mini-batch.")
    lr: float = Field(default=0.001, gt=0, description="Starting learning rate.")
    loss: str = Field(
        default="ce", description="ce, bce, focal, combo (0.75 BCE + 0.25 Jaccard), dice, jaccard."
    )
    class_imbalance: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None,
        validation_alias=AliasChoices("class_imbalance", "class imbalance"),
        description="One weight per class for the loss (ce, focal); 0 drops a class. "
        'The doc\'s "class imbalance" is this key.',
    )
    optimizer_config: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler_config: SchedulerConfig = Field(default_factory=SchedulerConfig)
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Early stopping; absent means train every epoch."
    )
    continue_training: bool = Field(
        default=False, description="Resume this version from its latest checkpoint."
    )
    export_checkpoint: str | list[str] | None = Field(
        default=None,
        description="Extra formats for saved models: " + describe_formats("checkpoint") + ".",
    )
    val_check_interval: float | int = Field(
        default=1.0,
        gt=0,
        description="Float in (0, 1]: fraction of an epoch; int: every N training batches.",
    )
    deterministic: bool = Field(default=False, description="Use deterministic algorithms.")
    compile: bool = Field(
        default=False,
        description="landseg: compile the network for training with torch.compile "
        "(nn.Module.compile(), which keeps the checkpoint keys; prediction and exports use "
        "the plain network). Pays a compilation at the start of each process; whether it "
        "pays back is measured in benchmarks/README.md.",
    )
    freeze_encoder_epochs: int = Field(
        default=0,
        ge=0,
        description="landseg: keep the model's encoder frozen for the first N epochs (no "
        "gradient, its normalisation layers' running statistics fixed), then train it; N at "
        "least epochs keeps it frozen for the whole run (a linear probe). Models with an "
        "encoder only (resnet18..152, deeplab, smp:<Architecture>).",
    )
    encoder_lr_factor: float = Field(
        default=1.0,
        gt=0,
        description="landseg: the encoder's learning rate is this times the rest's (lr), "
        "through every scheduler (its learning-rate values, such as cycliclr's base_lr and "
        "max_lr, are scaled for the encoder too; cosine annealing's eta_min, one value for "
        "both, must then stay 0). Models with an encoder only.",
    )
    random_seed: int = Field(default=42, ge=0, description="Seed for every random generator.")
    testing: bool = Field(
        default=False, description="Use a small fixed subset of every split (debugging)."
    )
    checkpoint_every_n_steps: PositiveInt | None = Field(
        default=None,
        description="landseg: also checkpoint every N training steps, so a crash loses at "
        "most N steps.",
    )
    init_weights: Path | None = Field(
        default=None,
        description="landseg: start a new run from the network weights of this landseg "
        "checkpoint (fine-tuning, with any other settings; the network's shapes must match). "
        "Not a continue: the optimiser, scheduler, epochs and history start afresh. Relative "
        "to the config file's folder.",
    )

    def problems(self) -> list[str]:
        """Rules between this section and the files it names, one line each."""
        if self.init_weights is not None and not self.init_weights.is_file():
            return [f"train_setup.init_weights: {self.init_weights}: no such checkpoint file"]
        return []

    @field_validator("val_check_interval")
    @classmethod
    def _fraction_or_batches(cls, value: float | int) -> float | int:
        if isinstance(value, float) and value > 1 and not value.is_integer():
            raise ValueError("a float val_check_interval is a fraction of an epoch in (0, 1]")
        if isinstance(value, float) and value > 1:
            return int(value)
        return value


# --------------------------------------------------------------------------- output_setup


class OutputSetup(StrictModel):
    """Where and what to write (ODEON's train tool, section Output setup)."""

    output_folder: Path = Field(description="Folder holding experiments and their versions.")
    model_filename: str | None = Field(
        default=None,
        description="Base name of saved models; default the model name. What follows its last "
        "dot is taken for an extension and dropped (unet.pth, unet: unet-last.ckpt; so write "
        "unet_lr0.01.pth, not unet_lr0.01).",
    )
    model_out_ext: Literal[".ckpt", ".pth", "ckpt", "pth"] | None = Field(
        default=None, description=".ckpt (default, Lightning checkpoints) or .pth."
    )
    name_exp_log: str | None = Field(
        default=None, description="Experiment folder name; default the launch date YYYY-MM-DD."
    )
    version_name: str | None = Field(
        default=None, description="Version folder name; default the launch time HH-MM-SS."
    )

    get_prediction: bool = Field(
        default=False, description="Write GeoTIFF predictions of the test split."
    )
    prediction_output_type: OutputTypeName = Field(
        default="uint8",
        description=describe(OUTPUT_TYPES) + ". Every prediction is a Cloud-Optimised GeoTIFF.",
    )
    class_colors: list[str] | None = Field(
        default=None,
        description="landseg: the colours of the classes in class predictions (colour table "
        'and .qml), one "#RRGGBB" per class, in class order. Default: the report\'s palette '
        "(matplotlib's tab10, tab20b, tab20c colours, then golden-angle hues).",
    )
    prediction_vectors: bool = Field(
        default=False,
        description="landseg: with get_prediction and prediction_output_type classes, also "
        "write <name>.gpkg beside each prediction: one polygon per 4-connected region, fields "
        "class_id and class_name (needs the vector extra). As landseg predict --vectorize.",
    )
    prediction_tta: Literal["d4", "flips", "rot90"] | None = Field(
        default=None,
        description="landseg: test-time augmentation of get_prediction: probabilities averaged "
        "over the 8 rotations and flips (d4, about 8x the time), the 4 flips or the 4 "
        "rotations. As landseg predict --tta.",
    )
    use_tensorboard: bool = Field(
        default=True, description="Write TensorBoard logs (ODEON's key; see loggers)."
    )
    use_wandb: bool = Field(
        default=False,
        description="Write offline W&B files (needs the wandb extra; ODEON's key; see loggers).",
    )
    loggers: list[str] | None = Field(
        default=None,
        description="landseg: the loggers to write, by name: tensorboard, wandb, csv. Default: "
        "tensorboard if use_tensorboard, wandb if use_wandb; when set, it replaces those two "
        "keys. The run's own files (logs/scalars.jsonl, arrays/, figures/) are always written.",
    )
    log_learning_rate: bool = Field(default=False, description="Log learning rate and momentum.")
    save_history: bool = Field(default=True, description="Write the per-epoch history JSON.")
    save_top_k: int = Field(
        default=3, ge=0, description="Checkpoints kept per monitored metric (val_loss, val_miou)."
    )
    progress: int = Field(default=1, ge=0, description="Progress bar refresh rate; 0 = off.")
    figures_every_n_epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="landseg: which epochs get drawn outputs (confusion and per-class figures, "
        "TensorBoard image grids and weight histograms). auto: an epoch is drawn while "
        "drawing stays under 2 % of the training time so far (a drawing is taken to cost 2 s "
        "until one is timed); N: epochs 0, N, 2N, ... Either way the final state is drawn. "
        "Numbers (scalars, history, confusion arrays, checkpoints) are written after every "
        "validation regardless.",
    )
    layout: Literal["odeon", "datamodule_model"] = Field(
        default="odeon",
        description="odeon: <output_folder>/<name_exp_log>/<version>; datamodule_model: "
        "<output_folder>/<datamodule>/<model>/<version>.",
    )

    def logger_names(self) -> list[str]:
        """The loggers to build: ``loggers``, else ODEON's use_tensorboard and use_wandb."""
        if self.loggers is not None:
            return list(self.loggers)
        flags = (("tensorboard", self.use_tensorboard), ("wandb", self.use_wandb))
        return [name for name, on in flags if on]

    @property
    def extension(self) -> str:
        ext = self.model_out_ext or ".ckpt"
        return ext if ext.startswith(".") else f".{ext}"

    @field_validator("class_colors")
    @classmethod
    def _hex_colours(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [c for c in value if not _HEX_COLOUR.fullmatch(c)]
        if bad:
            raise ValueError(
                f'colours are written "#RRGGBB" (e.g. "#1f77b4"); not: {", ".join(bad)}'
            )
        return value

    @field_validator("model_filename", "name_exp_log", "version_name", mode="before")
    @classmethod
    def _names_as_written(cls, value: Any) -> Any:
        """A name YAML or --set read as a number or a date (``name_exp_log: 2022-06-17``,
        ``version_name: 2``) is the name the user wrote; booleans are not (``no`` is False)."""
        if isinstance(value, (int, float, datetime.date)) and not isinstance(value, bool):
            return value.isoformat() if isinstance(value, datetime.date) else str(value)
        return value

    @field_validator("name_exp_log", "version_name")
    @classmethod
    def _one_folder_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "/" in value or value in {".", ".."}):
            raise ValueError("must be a single folder name (no '/', not empty)")
        return value


# --------------------------------------------------------------------------- device_setup


#: Lightning's accelerator names (``AcceleratorRegistry``) and its aliases auto and gpu. Kept
#: here so that validation does not import Lightning; a test compares them with Lightning's.
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")
#: Lightning's strategy names (``StrategyRegistry``) and auto; compared with Lightning's too.
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_find_unused_parameters_false",
    "ddp_find_unused_parameters_true",
    "ddp_fork",
    "ddp_fork_find_unused_parameters_false",
    "ddp_fork_find_unused_parameters_true",
    "ddp_notebook",
    "ddp_notebook_find_unused_parameters_false",
    "ddp_notebook_find_unused_parameters_true",
    "ddp_spawn",
    "ddp_spawn_find_unused_parameters_false",
    "ddp_spawn_find_unused_parameters_true",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme",
    "fsdp",
    "fsdp_cpu_offload",
    "single_device",
    "single_tpu",
    "single_xla",
    "xla",
    "xla_debug",
)


StopSignal = Literal["SIGTERM", "SIGUSR1"]
#: The signals that stop a run at a resumable point, besides Ctrl-C (SIGINT).
STOP_SIGNALS: tuple[StopSignal, ...] = ("SIGTERM", "SIGUSR1")


class DeviceSetup(StrictModel):
    """Hardware (ODEON's train tool, section Device setup), mapped onto Lightning's Trainer.

    This section is the one place that decodes ODEON's device keys: :meth:`lightning_args` for
    the trainer, :meth:`starts_processes` for the job runner, :meth:`problems` for validation.
    """

    accelerator: str | None = Field(
        default=None, description="cpu, gpu, cuda, mps, tpu, auto; default auto."
    )
    device: int | str | list[int] | None = Field(
        default=None,
        description='Number of devices (int), an id ("0") or ids ([0, 1]); 0 means the CPU.',
    )
    num_nodes: PositiveInt = Field(default=1, description="Nodes for distributed training.")
    num_workers: int = Field(default=4, ge=0, description="Data-loading worker processes.")
    num_processes: PositiveInt = Field(
        default=1, description="Processes for distributed training on the CPU."
    )
    strategy: str | None = Field(default=None, description="auto, ddp, ddp_spawn, ...")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        default="auto",
        description="landseg: Lightning's precision. auto: bf16-mixed where the hardware "
        "computes bfloat16 natively (CPUs with AMX or AVX-512 BF16, CUDA GPUs of compute "
        "capability 8.0 or more), else 32-true; the choice is printed, recorded in run.json "
        "and kept by a continued run. 32-true: float32 throughout, today's results bit for "
        "bit. bf16-mixed: bfloat16 autocast; 16-mixed: float16 autocast with loss scaling, "
        "GPUs only (refused for a run on the CPU). Weights, checkpoints and exports stay "
        "float32; losses and metrics are computed in float32.",
    )
    channels_last: bool | Literal["auto"] = Field(
        default="auto",
        description="landseg: keep the model and its inputs in channels-last memory format, "
        "which convolutions run faster in with bf16/16-mixed (tensor cores, AMX). auto: on "
        "exactly when the precision is bf16-mixed or 16-mixed.",
    )
    stop_signals: list[StopSignal] = Field(
        default_factory=lambda: list(STOP_SIGNALS),
        description="landseg: the signals that stop a run at a resumable point (after the "
        "current optimiser step, with a checkpoint), as Ctrl-C (SIGINT) always does; the "
        "command then exits 128 + the signal (143, 138). SLURM (--signal=USR1@90) and "
        "Kubernetes (SIGTERM) send them before ending a job.",
    )
    slurm_requeue: bool = Field(
        default=True,
        description="landseg: inside a SLURM batch job, a run (or cv job) stopped by SIGUSR1 "
        "(sbatch --signal=USR1@90: the time limit is near) calls `scontrol requeue` for its "
        "job once it is checkpointed, and the requeued job continues it. SIGTERM (scancel, "
        "preemption) never requeues. Outside SLURM it does nothing.",
    )

    def stop_signal_numbers(self) -> list[int]:
        """SIGINT (Ctrl-C stops every run) and ``stop_signals``, as signal numbers: what a
        run, a cv job and a search install their stop handlers for."""
        return signal_numbers(["SIGINT", *self.stop_signals])

    def problems(self) -> list[str]:
        """Unknown accelerator or strategy names and malformed device ids, one line each."""
        problems: list[str] = []
        if self.accelerator is not None and self.accelerator.lower() not in ACCELERATORS:
            problems.append(
                "device_setup.accelerator: "
                + unknown_name_message("accelerator", self.accelerator, list(ACCELERATORS))
            )
        if self.strategy is not None and self.strategy.lower() not in STRATEGIES:
            problems.append(
                "device_setup.strategy: "
                + unknown_name_message("strategy", self.strategy, list(STRATEGIES))
            )
        value = self.device
        if isinstance(value, int) and value < 0:
            problems.append(f"device_setup.device: must be >= 0 (0 means the CPU), got {value}")
        if isinstance(value, str) and not all(p.strip().isdigit() for p in value.split(",")):
            problems.append(
                f'device_setup.device: expected a device id such as "0" or "0,1", got \'{value}\''
            )
        if isinstance(value, list) and (not value or any(v < 0 for v in value)):
            problems.append(f"device_setup.device: expected device ids >= 0, got {value}")
        return problems

    def lightning_args(self) -> dict[str, Any]:
        """ODEON's device keys as Lightning's accelerator, devices, strategy, num_nodes, precision.

        ``device: 0`` means the CPU (as in ODEON's train tool). On the CPU, ``num_processes`` is
        the number of
        processes (DDP with gloo when > 1).
        """
        accelerator = (self.accelerator or "auto").lower()
        value = self.device
        if value == 0 or (value == "0" and accelerator == "cpu"):
            accelerator = "cpu"
        devices: Any
        if accelerator == "cpu":
            devices = self.num_processes
        elif value is None:
            devices = "auto"
        elif isinstance(value, str):
            devices = [int(part) for part in value.split(",")]
        else:
            devices = value
        strategy = self.strategy or "auto"
        if strategy == "auto" and accelerator == "cpu" and self.num_processes > 1:
            strategy = "ddp"
        return {
            "accelerator": accelerator,
            "devices": devices,
            "num_nodes": self.num_nodes,
            "strategy": strategy,
            "precision": self.precision,
        }

    def process_count(self) -> int | None:
        """Training processes (devices x nodes); None where Lightning decides (``auto``)."""
        devices = self.lightning_args()["devices"]
        if isinstance(devices, int):
            count = devices
        elif isinstance(devices, list):
            count = len(devices)
        else:
            return None
        return count * self.num_nodes

    def starts_processes(self) -> bool:
        """Whether training starts DDP processes of its own (several devices, nodes or CPUs)."""
        value = self.device
        many = (
            (isinstance(value, int) and value > 1)
            or (isinstance(value, list) and len(value) > 1)
            or (isinstance(value, str) and "," in value)
        )
        strategy = (self.strategy or "").lower()
        return many or self.num_processes > 1 or self.num_nodes > 1 or strategy.startswith("ddp")


# --------------------------------------------------------------------------- root


def path_from_config(value: Path, base: Path) -> Path:
    """Read a path as a config file means it, ``base`` being the config file's folder.

    ``~`` is the user's home, as in a shell (a config is not passed through one, so without
    this ``~/data/train.csv`` would name a folder called ``~``); a relative path is taken
    from ``base``, so a config reads the same whichever folder the command runs from.
    """
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


#: The file suffixes that make ``model_params.encoder_weights`` a path, not a weights name.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def is_weights_path(value: object) -> bool:
    """Whether ``model_params.encoder_weights`` names a file (a path, or a weights file's
    suffix) rather than smp's weights name (``imagenet``, ``ssl``...) or timm's ``true``."""
    if not isinstance(value, str | Path):
        return False
    text = str(value)
    return (
        "/" in text
        or "\\" in text
        or text.startswith(("~", "."))
        or text.lower().endswith(WEIGHTS_SUFFIXES)
    )


def band_names_problems(data: DataSource, n_bands: int | None) -> list[str]:
    """``data_source.band_names``: one name per band the model reads (``n_bands``: their
    count, once known)."""
    names = data.band_names
    if names is None or n_bands is None or len(names) == n_bands:
        return []
    what = "image_bands selects" if data.image_bands else "the images have"
    return [
        f"data_source.band_names: {len(names)} names but {what} {n_bands} bands; "
        "give one name per band the model reads, in their order"
    ]


def prediction_problems(
    data: DataSource, out: OutputSetup, *, tasks_have_test: bool = False
) -> list[str]:
    """``get_prediction`` predicts the test split: it needs one; polygons need class maps.

    ``tasks_have_test``: a cross-validation job, whose every task tests on its held-out
    groups, so data_source.test_file is not needed.
    """
    problems = []
    if out.get_prediction and data.test_file is None and not tasks_have_test:
        problems.append(
            "output_setup.get_prediction: predictions are made on the test split; "
            "set data_source.test_file or get_prediction false"
        )
    if out.get_prediction and data.windows is not None:
        problems.append(
            "output_setup.get_prediction: predicting the test split's scene rows "
            "(data_source.windows) is not supported yet; set get_prediction false and run "
            "`landseg predict` on the scenes"
        )
    maps = class_map_types()
    if out.prediction_vectors and out.prediction_output_type not in maps:
        problems.append(
            "output_setup.prediction_vectors: polygons are made from class maps; set "
            f"prediction_output_type {' or '.join(maps)} (not {out.prediction_output_type})"
        )
    if out.prediction_vectors and not all(
        importlib.util.find_spec(name) for name in ("shapely", "pyogrio")
    ):
        problems.append(
            "output_setup.prediction_vectors: needs shapely and pyogrio: install "
            "landseg[vector] or set prediction_vectors false"
        )
    return problems


def output_class_problems(out: OutputSetup, n_classes: int | None) -> list[str]:
    """The output keys that depend on the number of classes, once it is known.

    ``class_colors`` gives one colour per class; a ``classes`` prediction stores class indices
    as uint8 values below its nodata value, 255.
    """
    if n_classes is None:
        return []
    problems = []
    if out.class_colors is not None and len(out.class_colors) != n_classes:
        problems.append(
            f"output_setup.class_colors: {len(out.class_colors)} colour(s) for {n_classes} "
            "classes; give one per class, or leave it out for the default palette"
        )
    most = OUTPUT_TYPES.info(out.prediction_output_type)["max_classes"]
    if most is not None and n_classes > most:
        others = [name for name in OUTPUT_TYPES.names() if name != out.prediction_output_type]
        problems.append(
            f"output_setup.prediction_output_type: {out.prediction_output_type}: {n_classes} "
            f"classes do not fit in uint8 class indices (0-{most - 1}, {most} = nodata); "
            f"use {', '.join(others)}"
        )
    return problems


class LandsegConfig(StrictModel):
    """A whole train config: ODEON's four sections."""

    data_source: DataSource
    train_setup: TrainSetup
    output_setup: OutputSetup
    device_setup: DeviceSetup = Field(default_factory=DeviceSetup)
    cross_validation: CrossValidation | None = Field(
        default=None,
        description="landseg: group-wise cross-validation, used by `landseg cv` only "
        "(see cross_validation.md).",
    )
    search: Search | None = Field(
        default=None,
        description="landseg: settings searched inside cross-validation, used by `landseg "
        "tune` only (see tuning.md).",
    )

    def resolve_paths(self, base: Path) -> LandsegConfig:
        """Make the config's paths absolute, as :func:`path_from_config` reads them."""
        data = self.data_source
        for key in ("train_file", "val_file", "test_file", "cache_dir"):
            value = getattr(data, key)
            if value is not None:
                setattr(data, key, path_from_config(value, base))
        out = self.output_setup
        out.output_folder = path_from_config(out.output_folder, base)
        train = getattr(self, "train_setup", None)  # a partial config while validating
        if train is not None and train.init_weights:
            train.init_weights = path_from_config(train.init_weights, base)
        weights = train.model_params.get("encoder_weights") if train is not None else None
        if train is not None and is_weights_path(weights):
            path = path_from_config(Path(str(weights)), base)
            train.model_params = {**train.model_params, "encoder_weights": str(path)}
        cv = getattr(self, "cross_validation", None)
        if cv is not None and cv.file is not None:
            cv.file = path_from_config(cv.file, base)
        return self
