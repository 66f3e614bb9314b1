"""A model that leaves landseg: self-describing ONNX and TorchScript exports, and running them.

``landseg export RUN`` writes ``RUN/exports/<base>.onnx`` (or ``.pt``) and ``<base>.stac.json``:

- the network with the softmax in its graph: input ``image`` ``(batch, bands, tile, tile)``
  float32, output ``probabilities`` ``(batch, classes, tile, tile)``; the tile size is fixed,
  the batch axis dynamic;
- the normalisation is *not* in the graph but described: ``(pixel / pixel_range - mean) / std``
  per band, as the run's test split was normalised (``scene.Normalization``);
- the metadata (:func:`describe`) travels inside the file: the ONNX model's ``metadata_props``
  (key ``landseg``, JSON, plus the keys the QGIS Deepness plugin reads), the TorchScript
  file's extra file ``landseg.json``; a STAC item with the Machine Learning Model extension
  (``mlm:``) is written beside it.

``landseg export RUN --format encoder`` writes ``<base>-encoder.safetensors`` instead: the
trained encoder alone with its bands and normalisation (:func:`encoder_metadata`), for another
run's ``model_params.encoder_weights``; no STAC item describes it (it does not predict).

``landseg predict --model FILE`` runs such a file (:class:`PortableModel`, which has the
interface of ``scene.LoadedModel`` that the scene prediction uses), normalising the inputs from
its metadata alone: onnxruntime for ``.onnx``, ``torch.jit.load`` for ``.pt``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landseg import __version__
from landseg.config.choices import predicting_formats
from landseg.config.schema import LandsegConfig, OutputSetup
from landseg.core.errors import LandsegError
from landseg.core.registry import Registry, check_implements
from landseg.maps.style import run_colors
from landseg.runs.checkpoints import CHECKPOINT_DIR, base_of

#: Key of the landseg metadata (JSON) in an ONNX model's ``metadata_props``.
#: ``(export file, device) -> (its metadata, forward on a batch, backend name)``.
Loader = Callable[[Path, str], tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray], str]]
METADATA_KEY = "landseg"
#: Version of the metadata layout; a reader refuses a newer one.
METADATA_VERSION = 1
STAC_SUFFIX = ".stac.json"
EXPORT_DIR = "exports"
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
#: Tile size of an export unless ``--tile`` says otherwise (``landseg predict``'s default).
DEFAULT_TILE = 256
#: What onnxruntime needs to be installed.
ONNX_RUNTIME_EXTRA = "install landseg's onnx extra: pip install 'landseg[onnx]'"
PIXEL_RANGE_RULE = (
    "pixel_range null: by the raster's dtype, 255 for uint8, as is for float rasters; other "
    "integer types need --pixel-range"
)


# ---------------------------------------------------------------------------- what is exported


@dataclass(frozen=True)
class ExportOptions:
    """Tile size and overlap in pixels (None: 256, and a quarter of the tile), pixel range."""

    tile: int | None = None
    overlap: int | None = None
    pixel_range: float | None = None

    def tiling(self, size_multiple: int) -> tuple[int, int]:
        tile = DEFAULT_TILE if self.tile is None else self.tile
        overlap = tile // 4 if self.overlap is None else self.overlap
        if tile < size_multiple or tile % size_multiple:
            raise LandsegError(
                f"--tile {tile}: an export's tile size must be a multiple of the model's "
                f"{size_multiple} px"
            )
        if not 0 <= overlap < tile:
            raise LandsegError(
                f"--overlap must be >= 0 and smaller than the tile {tile}, got {overlap}"
            )
        if self.pixel_range is not None and self.pixel_range <= 0:
            raise LandsegError(f"--pixel-range must be > 0, got {self.pixel_range}")
        return tile, overlap


@dataclass(frozen=True)
class TrainingData:
    """What the header of the run's first training image says; None where it is unreadable."""

    dtype: str | None = None
    tile: list[int] | None = None  # [height, width]
    resolution: float | None = None  # metres per pixel (projected CRS in metres only)
    band_names: list[str] | None = None  # descriptions of the bands the model reads


def training_data(config: LandsegConfig, bands: Sequence[int]) -> TrainingData:
    """The header facts of the run's training images (data moved or gone: all None)."""
    from landseg.data.csvfiles import read_pairs
    from landseg.data.raster import open_raster

    try:
        pairs = read_pairs(config.data_source.train_file)
        with open_raster(pairs[0].image) as src:
            resolution = None
            crs = src.crs
            if crs is not None and crs.is_projected and crs.linear_units in ("metre", "meter"):
                resolution = float(sum(abs(r) for r in src.res) / 2)
            names = None
            if max(bands) <= src.count and all(src.descriptions[b - 1] for b in bands):
                names = [str(src.descriptions[b - 1]) for b in bands]
            return TrainingData(src.dtypes[0], [src.height, src.width], resolution, names)
    except Exception:  # any reason (moved, unreadable, no rows): the facts are unknown
        return TrainingData()


def config_resolution(value: Any) -> float | None:
    """``data_source.resolution`` as one pixel size: the test split's, else train's, else val's."""
    if isinstance(value, dict):
        value = next((value[s] for s in ("test", "train", "val") if value.get(s) is not None), None)
    if value is None:
        return None
    if isinstance(value, list):
        return float(sum(abs(v) for v in value) / len(value))
    return abs(float(value))


def architecture(name: str) -> str:
    """A well-known architecture name for ``mlm:architecture``."""
    if name in ("unet", "lightunet") or name.startswith("resnet"):
        return "U-Net"
    if name == "deeplab":
        return "DeepLabV3+"
    return name.removeprefix("smp:")


def run_of(checkpoint: Path, loaded_run: Path | None) -> Path:
    """The run folder of a checkpoint: above ``checkpoints/``, else the checkpoint's folder."""
    if checkpoint.suffix == ".pth" and loaded_run is not None:
        return loaded_run
    if checkpoint.parent.name == CHECKPOINT_DIR:
        return checkpoint.parent.parent
    return checkpoint.parent


def describe(
    loaded: Any,
    checkpoint: Path,
    run: Path,
    options: ExportOptions,
    data: TrainingData | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The metadata of an export of ``loaded`` (a ``scene.LoadedModel``), as plain JSON types.

    ``data`` (default: read from the run's training images) gives the training dtype, tile
    size, resolution and band names when the config does not.
    """
    from landseg.models.pretrained import export_record
    from landseg.runs.checkpoints import CheckpointName
    from landseg.runs.folder import RunState

    config = loaded.config
    source = config.data_source
    train = config.train_setup
    tile, overlap = options.tiling(loaded.size_multiple)
    bands = list(source.image_bands) if source.image_bands else None
    read = bands or list(range(1, loaded.in_channels + 1))
    data = data if data is not None else training_data(config, read)
    configured = options.pixel_range or source.pixel_range
    if isinstance(configured, dict):  # an export records one value, its inputs' dtype unknown
        raise LandsegError(
            f"{run}: data_source.pixel_range is given per dtype ({json.dumps(configured)}); an "
            "export records one value: pass --pixel-range for the rasters it will predict"
        )
    training_range = configured
    if training_range is None and data.dtype is not None:
        from landseg.data.normalization import resolve_pixel_range

        try:
            training_range = resolve_pixel_range(data.dtype, None)
        except LandsegError:
            training_range = None
    if training_range is None:
        raise LandsegError(
            f"{run}: the run's config sets no data_source.pixel_range and its training images "
            f"cannot be read ({source.train_file}); pass --pixel-range (the value that maps "
            "to 1.0, e.g. 255 for 8-bit images)"
        )
    weights = source.normalization_weights
    stats = weights.for_split("test") if weights else None
    resolution = config_resolution(source.resolution)
    if resolution is None:
        resolution = data.resolution
    colours = run_colors(config, loaded.n_classes)
    parsed = CheckpointName.parse(checkpoint)
    state = RunState.read(run)
    k, c = loaded.n_classes, loaded.in_channels
    network = getattr(loaded, "model", None)
    return {
        "landseg_export": METADATA_VERSION,
        "landseg_version": __version__,
        "task": "semantic-segmentation",
        "model": {
            "name": train.model_name,
            "params": dict(train.model_params),
            "architecture": architecture(train.model_name),
            "size_multiple": loaded.size_multiple,
            "parameters": (int(sum(p.numel() for p in network.parameters())) if network else None),
            "encoder_weights": export_record(state.encoder_weights if state else None),
        },
        "input": {
            "name": "image",
            "shape": [-1, c, tile, tile],
            "dim_order": ["batch", "channel", "height", "width"],
            "data_type": "float32",
            "bands": bands,
            "band_names": source.band_names or data.band_names or [f"band {b}" for b in read],
        },
        "output": {
            "name": "probabilities",
            "shape": [-1, k, tile, tile],
            "dim_order": ["batch", "class", "height", "width"],
            "data_type": "float32",
            "activation": "softmax",
        },
        "classes": [
            {"value": i, "name": name, "color": colours[i]}
            for i, name in enumerate(loaded.class_labels)
        ],
        "normalization": {
            "formula": "(pixel / pixel_range - mean) / std, per band",
            "pixel_range": configured,
            "pixel_range_rule": PIXEL_RANGE_RULE,
            "training_dtype": data.dtype,
            "training_pixel_range": float(training_range),
            "mean": list(stats.mean) if stats else None,
            "std": list(stats.std) if stats else None,
            "nodata": "a pixel equal to the raster's nodata in every band is set to 0 before "
            "scaling and written as nodata",
        },
        "tiling": {
            "tile": tile,
            "overlap": overlap,
            "overlap_percent": round(100 * overlap / tile),
            "blending": "2D Hann window, floor 1e-3; tile origins on the CRS's pixel grid",
            "training_tile": data.tile,
        },
        "resolution": resolution,
        "resolution_unit": "m",
        "source": {
            "run": str(run.absolute()),
            "run_name": run.name,
            "checkpoint": checkpoint.name,
            "epoch": parsed.epoch if parsed else None,
            "best": dict(state.best) if state else {},
            "exported": (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds"),
        },
    }


def deepness_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The ONNX ``metadata_props`` that the QGIS Deepness plugin reads (JSON-encoded values).

    Deepness divides pixels by 255, then standardises with ``standardization_mean``/``_std``;
    ``(p / 255 - m') / s'`` equals the run's ``(p / P - m) / s`` with ``m' = m P / 255`` and
    ``s' = s P / 255`` (P the training pixel range). ``resolution`` is in cm per pixel,
    ``tiles_overlap`` in percent of the tile.
    """
    norm = meta["normalization"]
    channels = meta["input"]["shape"][1]
    factor = norm["training_pixel_range"] / 255.0
    mean = norm["mean"] or [0.0] * channels
    std = norm["std"] or [1.0] * channels
    tile = meta["tiling"]["tile"]
    values: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(c["value"]): c["name"] for c in meta["classes"]},
        "tile_size": tile,
        "tiles_size": tile,
        "tiles_overlap": meta["tiling"]["overlap_percent"],
        "standardization_mean": [m * factor for m in mean],
        "standardization_std": [s * factor for s in std],
    }
    if meta["resolution"] is not None:
        values["resolution"] = meta["resolution"] * 100
    return {key: json.dumps(value) for key, value in values.items()}


def value_scaling(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The normalisation as MLM ``value_scaling`` on raw pixels: ``(p - m P) / (s P)``."""
    norm = meta["normalization"]
    scale = norm["training_pixel_range"]
    if norm["mean"] is None:
        return [{"type": "scale", "value": scale}]
    return [
        {"type": "z-score", "mean": m * scale, "stddev": s * scale}
        for m, s in zip(norm["mean"], norm["std"], strict=True)
    ]


def stac_item(meta: dict[str, Any], item_id: str, files: dict[str, Path]) -> dict[str, Any]:
    """A STAC item (MLM extension v1.4) describing the exports ``files`` (format -> path)."""
    model = meta["model"]
    source = meta["source"]
    properties: dict[str, Any] = {
        "datetime": source["exported"],
        "description": (
            f"landseg {model['name']} from run {source['run_name']} ({source['checkpoint']}): "
            f"per-class probabilities of {meta['tiling']['tile']} px tiles"
        ),
        "mlm:name": item_id,
        "mlm:architecture": model["architecture"],
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": _torch_version(),
        "mlm:pretrained": bool(
            model.get("encoder_weights") or model["params"].get("encoder_weights")
        ),
        "mlm:pretrained_source": (model.get("encoder_weights") or {}).get("file")
        or model["params"].get("encoder_weights"),
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:input": [
            {
                "name": meta["input"]["name"],
                "bands": meta["input"]["band_names"],
                "input": {k: meta["input"][k] for k in ("shape", "dim_order", "data_type")},
                "description": (
                    "image bands "
                    + (str(meta["input"]["bands"]) if meta["input"]["bands"] else "(all)")
                    + ", "
                    + meta["normalization"]["formula"]
                ),
                "value_scaling": value_scaling(meta),
                "resize_type": None,
                "pre_processing_function": None,
            }
        ],
        "mlm:output": [
            {
                "name": meta["output"]["name"],
                "tasks": ["semantic-segmentation"],
                "result": {k: meta["output"][k] for k in ("shape", "dim_order", "data_type")},
                "description": "per-class probabilities (softmax in the model); the class of "
                "a pixel is the most probable",
                "classification:classes": [
                    {"value": c["value"], "name": c["name"], "color_hint": c["color"][1:].upper()}
                    for c in meta["classes"]
                ],
                "post_processing_function": None,
            }
        ],
        "mlm:hyperparameters": {
            "tile_size": meta["tiling"]["tile"],
            "tile_overlap": meta["tiling"]["overlap"],
            "pixel_range": meta["normalization"]["training_pixel_range"],
        },
        "bands": [{"name": name} for name in meta["input"]["band_names"]],
        "landseg:version": meta["landseg_version"],
        "landseg:run": source["run"],
        "landseg:checkpoint": source["checkpoint"],
    }
    if model["parameters"]:
        properties["mlm:total_parameters"] = model["parameters"]
    if meta["resolution"] is not None:
        properties["gsd"] = meta["resolution"]
    from landseg.models.export import PORTABLE_WRITERS

    assets = {}
    for fmt, path in files.items():
        kind = PORTABLE_WRITERS.get(fmt)
        assets[fmt] = {
            "href": f"./{path.name}",
            "type": f"application/octet-stream; framework={kind.media_framework}",
            "title": f"{item_id} ({fmt})",
            "roles": ["mlm:model", "mlm:compiled", "model"],
            "mlm:artifact_type": kind.artifact_type,
        }
        if kind.mlm_framework is not None:
            assets[fmt]["mlm:framework"] = kind.mlm_framework
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA],
        "id": item_id,
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": assets,
    }


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def export_run(
    reference: str,
    formats: Sequence[str],
    options: ExportOptions,
    search: Path | None = None,
    folder: Path | None = None,
) -> list[Path]:
    """Export a run's checkpoint (``--run``'s references) in ``formats``; the files written.

    Into ``folder`` (default ``RUN/exports``): ``<base>.onnx`` / ``<base>.pt`` (base: the
    checkpoint's base name), then ``<base>.stac.json`` describing them; each written
    atomically.
    """
    from landseg.inference.scene import LoadedModel
    from landseg.models import export
    from landseg.runs.catalog import resolve_checkpoint

    writers = export.PORTABLE_WRITERS
    unknown = [f for f in formats if f not in writers]
    if unknown or not formats:
        raise LandsegError(f"--format must be one of {', '.join(writers)}, got {unknown}")
    checkpoint = Path(resolve_checkpoint(reference, search)).absolute()
    loaded = LoadedModel.load(checkpoint, "cpu")
    options.tiling(loaded.size_multiple)  # refuse a bad tile before reading anything else
    if "onnx" in formats:
        try:
            import onnx  # noqa: F401
        except ImportError as error:
            raise LandsegError(
                f"--format onnx needs the onnx package: {export.ONNX_EXTRA}"
            ) from error
    if "encoder" in formats:  # refuse a network without one before anything is written
        export.network_encoder(loaded.model, loaded.config.train_setup.model_name)
    run = run_of(checkpoint, loaded.run)
    base = base_of(checkpoint)
    folder = Path(folder) if folder is not None else run / EXPORT_DIR
    meta = describe(loaded, checkpoint, run, options)
    tile = meta["tiling"]["tile"]
    written: dict[str, Path] = {}
    for fmt in dict.fromkeys(formats):
        writer = writers.get(fmt)
        path = folder / f"{base}{writer.suffix}"
        text = json.dumps({**meta, "format": fmt})
        if fmt in predicting_formats():
            props = {**deepness_metadata(meta), METADATA_KEY: text}
        else:
            props = encoder_metadata(loaded, checkpoint, run, meta)
        written[fmt] = writer.write(loaded.model, loaded.in_channels, tile, path, text, props)
    models = {fmt: path for fmt, path in written.items() if fmt in predicting_formats()}
    if not models:  # an encoder alone: no model that predicts for a STAC item to describe
        return list(written.values())
    from landseg.core.files import atomic_write_json

    item = folder / f"{base}{STAC_SUFFIX}"
    atomic_write_json(item, stac_item(meta, f"{run.name}-{base}", models))
    return [*written.values(), item]


def encoder_metadata(
    loaded: Any, checkpoint: Path, run: Path, meta: dict[str, Any]
) -> dict[str, str]:
    """The string metadata of ``--format encoder``'s ``.safetensors`` file: what another run
    needs to start from it (encoder name, bands, the normalisation the encoder was trained
    with, 0-1 range) and where it came from (run, checkpoint and its SHA-256)."""
    from landseg.models.export import ENCODER_FORMAT, ENCODER_FORMAT_VERSION
    from landseg.models.registry import encoder_name
    from landseg.runs.folder import file_sha256

    config = loaded.config
    train = config.train_setup
    source = config.data_source
    weights = source.normalization_weights
    stats = weights.for_split("train") if weights else None
    values = {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "encoder_name": encoder_name(train.model_name, train.model_params) or "",
        "model_name": train.model_name,
        "in_channels": str(loaded.in_channels),
        "pixel_range": json.dumps(meta["normalization"]["training_pixel_range"]),
        "source_run": str(run.absolute()),
        "source_checkpoint": checkpoint.name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "landseg_version": __version__,
    }
    band_names = getattr(source, "band_names", None)  # data_source.band_names, where it exists
    if band_names:
        values["band_names"] = json.dumps([str(name) for name in band_names])
    if stats is not None:
        values["mean"] = json.dumps(list(stats.mean))
        values["std"] = json.dumps(list(stats.std))
    return values


# ---------------------------------------------------------------------------- running an export


def config_from_metadata(meta: dict[str, Any], path: Path) -> LandsegConfig:
    """The config that ``scene`` reads (bands, pixel range, mean/std, model name, class
    colours), from an export's metadata alone. ``train_file`` and ``output_folder`` are
    placeholders (the export's own path), never read."""
    norm = meta["normalization"]
    stats = {"mean": norm["mean"], "std": norm["std"]} if norm["mean"] is not None else None
    output: dict[str, Any] = {"output_folder": str(path.parent)}
    if "class_colors" in OutputSetup.model_fields:  # the colours of class predictions
        output["class_colors"] = [c["color"] for c in meta["classes"]]
    return LandsegConfig.model_validate(
        {
            "data_source": {
                "train_file": str(path),
                "image_bands": meta["input"]["bands"],
                "class_labels": [c["name"] for c in meta["classes"]],
                "pixel_range": norm["pixel_range"],
                "normalization_weights": {"train": stats} if stats else None,
                "resolution": meta["resolution"],
            },
            "train_setup": {
                "model_name": meta["model"]["name"],
                "model_params": meta["model"]["params"],
            },
            "output_setup": output,
        }
    )


@dataclass
class PortableModel:
    """An export of ``landseg export`` ready to predict, with ``scene.LoadedModel``'s interface
    (``tile_probabilities``, ``class_labels``, ``n_classes``, ``in_channels``,
    ``size_multiple``, ``config``, ``checkpoint``, ``run``), so ``scene.predict_files`` runs it.

    ``checkpoint`` is the export file (the outputs' ``landseg_checkpoint`` tag names it);
    ``run`` is None. Tiles of any size up to ``tile`` are predicted: a smaller one is padded
    by reflection to the export's fixed ``tile``, and its prediction cropped back.
    """

    metadata: dict[str, Any]
    config: LandsegConfig
    class_labels: list[str]
    in_channels: int
    size_multiple: int
    tile: int
    overlap: int
    checkpoint: Path
    backend: str
    forward: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    run: Path | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> PortableModel:
        """An ``.onnx`` (onnxruntime) or ``.pt`` (TorchScript) file of ``landseg export``."""
        path = Path(path).absolute()
        if not path.is_file():
            raise LandsegError(f"{path}: model file not found")
        from landseg.models.export import PORTABLE_WRITERS

        suffixes = {PORTABLE_WRITERS.get(name).suffix: name for name in predicting_formats()}
        if path.suffix not in suffixes:
            raise LandsegError(
                f"{path}: --model takes a {' or '.join(sorted(suffixes))} file written by "
                "landseg export"
            )
        meta, forward, backend = LOADERS.get(suffixes[path.suffix])(path, device)
        version = meta.get("landseg_export")
        if not isinstance(version, int) or version > METADATA_VERSION:
            raise LandsegError(
                f"{path}: export metadata version {version} is not one this landseg reads "
                f"(up to {METADATA_VERSION}); update landseg"
            )
        try:
            config = config_from_metadata(meta, path)
            tiling = meta["tiling"]
            return cls(
                metadata=meta,
                config=config,
                class_labels=[c["name"] for c in meta["classes"]],
                in_channels=int(meta["input"]["shape"][1]),
                size_multiple=int(meta["model"]["size_multiple"]),
                tile=int(tiling["tile"]),
                overlap=int(tiling["overlap"]),
                checkpoint=path,
                backend=backend,
                forward=forward,
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise LandsegError(f"{path}: its landseg metadata is incomplete ({error})") from error

    def tile_probabilities(self, tiles: np.ndarray, batch_size: int) -> np.ndarray:
        """Probabilities ``(N, K, h, w)`` of tiles ``(N, C, h, w)``, ``h, w <= tile``."""
        n, _, height, width = tiles.shape
        if height > self.tile or width > self.tile:
            raise LandsegError(
                f"{self.checkpoint.name} takes tiles of {self.tile} px; a {height}x{width} "
                f"tile is larger (use --tile {self.tile})"
            )
        pad_h, pad_w = self.tile - height, self.tile - width
        if pad_h or pad_w:
            tiles = np.pad(tiles, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
        out = np.empty((n, self.n_classes, height, width), dtype=np.float32)
        for start in range(0, n, batch_size):
            batch = np.ascontiguousarray(tiles[start : start + batch_size], dtype=np.float32)
            out[start : start + batch_size] = self.forward(batch)[:, :, :height, :width]
        return out


def _metadata(path: Path, text: str | bytes | None) -> dict[str, Any]:
    if not text:
        raise LandsegError(f"{path}: no landseg metadata in this model (not a landseg export)")
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise LandsegError(f"{path}: its landseg metadata is not JSON ({error})") from error
    if not isinstance(meta, dict):
        raise LandsegError(f"{path}: its landseg metadata is not a JSON object")
    return meta


def _load_onnx(
    path: Path, device: str
) -> tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray], str]:
    try:
        import onnxruntime
    except ImportError as error:
        raise LandsegError(
            f"{path}: running an ONNX model needs onnxruntime: {ONNX_RUNTIME_EXTRA}"
        ) from error
    from landseg.inference.scene import choose_device

    providers = ["CPUExecutionProvider"]
    if choose_device(device).type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise LandsegError(
                "--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
            )
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:
        line = str(error).strip().splitlines()
        raise LandsegError(
            f"{path}: not a readable ONNX model ({line[0] if line else error})"
        ) from error
    meta = _metadata(path, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
    input_name = session.get_inputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: batch})[0])

    return meta, forward, f"onnxruntime ({session.get_providers()[0]})"


def _load_torchscript(
    path: Path, device: str
) -> tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray], str]:
    import warnings

    import torch

    from landseg.inference.scene import choose_device
    from landseg.models.export import TORCHSCRIPT_METADATA

    target = choose_device(device)
    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location=target, _extra_files=extra)
    except Exception as error:
        line = str(error).strip().splitlines()
        raise LandsegError(
            f"{path}: not a readable TorchScript model ({line[0] if line else error})"
        ) from error
    meta = _metadata(path, extra[TORCHSCRIPT_METADATA])
    module.eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            probs = module(torch.from_numpy(batch).to(target))
        return np.asarray(probs.float().cpu().numpy())

    return meta, forward, f"torchscript ({target})"


#: How ``predict --model`` runs each format of ``landseg export``.
LOADERS: Registry[Loader] = Registry("export format loader")
LOADERS.add("onnx", _load_onnx)
LOADERS.add("torchscript", _load_torchscript)
check_implements(predicting_formats(), LOADERS)
