"""A trained network in other formats: ``train_setup.export_checkpoint``'s and ``landseg export``'s.

The formats' names and meanings are :data:`landseg.config.choices.EXPORT_FORMATS`'; their
writers are registered here, :data:`CHECKPOINT_WRITERS` and :data:`PORTABLE_WRITERS`, and
checked against those names when this module is imported.

Every file is written atomically and loads without landseg: ``torch.load(weights_only=True)``
for ``.pth``, ``torch.jit.load`` for TorchScript.

``landseg export``'s portable models (:func:`export_onnx`, :func:`export_torchscript`) add the
softmax to the graph, fix the tile size, keep the batch axis dynamic and carry metadata; what
the metadata says is decided in ``landseg.inference.portable``. ``--format encoder``
(:func:`export_encoder`) writes the trained encoder alone as ``.safetensors``, for another
run's ``model_params.encoder_weights``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landseg import __version__
from landseg.config.choices import formats_for
from landseg.core.errors import LandsegError
from landseg.core.files import atomic_path
from landseg.core.registry import Registry, check_implements, unknown_name_message


def save_torch(obj: Any, destination: Path) -> None:
    with atomic_path(destination) as tmp:
        torch.save(obj, tmp)


def export_formats(value: str | list[str] | None) -> list[str]:
    """``export_checkpoint`` as a list of format names (``.pth`` read as ``pth``)."""
    names = [value] if isinstance(value, str) else list(value or [])
    return [name.lower().lstrip(".") for name in names]


def export_problems(value: str | list[str] | None) -> list[str]:
    return [
        "train_setup.export_checkpoint: "
        + unknown_name_message("export format", name, CHECKPOINT_WRITERS.names())
        for name in export_formats(value)
        if name not in CHECKPOINT_WRITERS
    ]


def export_model(
    network: torch.nn.Module,
    in_channels: int,
    fmt: str,
    stem: Path,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``network`` in an extra format (``export_checkpoint``); returns the file.

    ``metadata`` (e.g. the encoder weights the run started from: file name, SHA-256) travels
    in the formats that can carry it: TorchScript's ``landseg_checkpoint.json`` extra file;
    ``.pth`` stays ODEON's bare state dict.

    Raises ValueError naming the format when no writer has that name (validation refuses it
    before any training; this guards callers from Python)."""
    if fmt not in CHECKPOINT_WRITERS:
        raise ValueError(
            unknown_name_message("export_checkpoint format", fmt, CHECKPOINT_WRITERS.names())
        )
    return CHECKPOINT_WRITERS.get(fmt)(network.eval().cpu(), in_channels, stem, metadata or {})


#: ``(network in eval mode on the CPU, input channels, stem, metadata) -> the file written``.
CheckpointWriter = Callable[[torch.nn.Module, int, Path, dict[str, Any]], Path]
#: The writers of ``train_setup.export_checkpoint``'s formats: the names of
#: :data:`landseg.config.choices.EXPORT_FORMATS` whose ``checkpoint`` info is true.
CHECKPOINT_WRITERS: Registry[CheckpointWriter] = Registry("export_checkpoint format")
#: The extra file of a checkpoint's TorchScript export that holds its metadata (JSON).
CHECKPOINT_METADATA = "landseg_checkpoint.json"


@CHECKPOINT_WRITERS.register("pth")
def _pth(model: torch.nn.Module, in_channels: int, stem: Path, metadata: dict[str, Any]) -> Path:
    path = stem.with_suffix(".pth")
    save_torch(model.state_dict(), path)  # ODEON's layout: the state dict alone
    return path


@CHECKPOINT_WRITERS.register("torchscript")
def _torchscript(
    model: torch.nn.Module, in_channels: int, stem: Path, metadata: dict[str, Any]
) -> Path:
    path = stem.with_suffix(".torchscript.pt")
    example = torch.zeros(1, in_channels, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    extra = {CHECKPOINT_METADATA: json.dumps(metadata)} if metadata else {}
    with atomic_path(path) as tmp:
        traced.save(str(tmp), _extra_files=extra)
    return path


# ---------------------------------------------------------------------------- portable models

#: ONNX opset of ``export_onnx`` (onnxruntime >= 1.14 runs it; QGIS Deepness too).
ONNX_OPSET = 18
#: Names of the graph's input and output in both portable formats.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
#: The extra file of a TorchScript export that holds its metadata (JSON).
TORCHSCRIPT_METADATA = "landseg.json"
#: The optional dependencies of ONNX export, and how to install them.
ONNX_EXTRA = "install landseg's onnx extra: pip install 'landseg[onnx]'"


class Probabilities(torch.nn.Module):
    """A network's per-class probabilities: the softmax of its logits over the class axis."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(image), dim=1)


def _example(in_channels: int, tile: int, batch: int) -> torch.Tensor:
    return torch.zeros(batch, in_channels, tile, tile)


def export_onnx(
    network: torch.nn.Module,
    in_channels: int,
    tile: int,
    destination: Path,
    metadata: dict[str, str],
    opset: int = ONNX_OPSET,
) -> Path:
    """Write ``network`` as ONNX: softmax in the graph, ``(batch, in_channels, tile, tile)``
    float32 input ``image`` with a dynamic batch axis, ``(batch, classes, tile, tile)`` output
    ``probabilities``, and ``metadata`` as the model's ``metadata_props`` (string values).

    torch.onnx's dynamo exporter is tried first, then the TorchScript-based one; the file is
    written atomically. Needs the ``onnx`` extra (onnx, onnxscript).
    """
    try:
        import onnx
    except ImportError as error:
        raise LandsegError(f"ONNX export needs the onnx package: {ONNX_EXTRA}") from error
    model = Probabilities(network.eval().cpu()).eval()
    proto, reasons = None, []
    for dynamo in (True, False):
        try:
            proto = _onnx_proto(model, in_channels, tile, opset, dynamo)
            break
        except Exception as error:  # the other exporter may cope: report both if not
            line = str(error).strip().splitlines()
            reasons.append(f"{'dynamo' if dynamo else 'torchscript'}: {line[0] if line else error}")
    if proto is None:
        raise LandsegError(
            f"{destination}: the network could not be exported to ONNX ({'; '.join(reasons)})"
        )
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "landseg", __version__
    with atomic_path(destination) as tmp:
        onnx.save_model(proto, str(tmp))
    return destination


def _onnx_proto(
    model: torch.nn.Module, in_channels: int, tile: int, opset: int, dynamo: bool
) -> Any:
    import tempfile
    import warnings

    import onnx

    example = (_example(in_channels, tile, 2),)  # batch 2: a batch of 1 would be specialised
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(
                model,
                example,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                verbose=False,
                dynamic_shapes=({0: batch},),
            )
            if program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            return program.model_proto
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            torch.onnx.export(
                model,
                example,
                path,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
            return onnx.load_model(str(path))


def export_torchscript(
    network: torch.nn.Module, in_channels: int, tile: int, destination: Path, metadata: str
) -> Path:
    """Write ``network`` as TorchScript with softmax, traced on ``tile`` x ``tile`` tiles (any
    batch size runs), ``metadata`` (JSON) as its extra file ``landseg.json``; atomically."""
    import warnings

    model = Probabilities(network.eval().cpu()).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, _example(in_channels, tile, 1))
        with atomic_path(destination) as tmp:
            traced.save(str(tmp), _extra_files={TORCHSCRIPT_METADATA: metadata})
    return destination


# ---------------------------------------------------------------------------- encoder files

#: ``format`` and ``format_version`` in the metadata of an encoder file (``--format encoder``).
ENCODER_FORMAT = "landseg-encoder"
ENCODER_FORMAT_VERSION = "1"


def network_encoder(network: torch.nn.Module, model_name: str) -> torch.nn.Module:
    """The encoder of an smp network (``network.encoder``); landseg's own U-Nets have none,
    which is refused naming the model."""
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise LandsegError(
            f"model '{model_name}' has no separate encoder to export (landseg's own U-Net); "
            "--format encoder needs an smp model (resnet18 ... resnet152, deeplab, smp:...)"
        )
    return encoder


def encoder_tensors(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``encoder.state_dict()`` as safetensors stores it: contiguous CPU tensors of their own
    (no shared storage), floating ones as float32; integer buffers (batch norm's
    ``num_batches_tracked``) keep their type."""
    tensors = {}
    for key, value in encoder.state_dict().items():
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        tensors[key] = tensor.contiguous().clone()
    return tensors


def export_encoder(
    network: torch.nn.Module, model_name: str, destination: Path, metadata: dict[str, str]
) -> Path:
    """Write ``network``'s encoder as a ``.safetensors`` file with string ``metadata``: the
    keys of ``network.encoder.state_dict()`` (no ``encoder.`` prefix), atomically."""
    from safetensors.torch import save_file

    tensors = encoder_tensors(network_encoder(network, model_name))
    with atomic_path(destination) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return destination


# ---------------------------------------------------------------------------- the formats


@dataclass(frozen=True)
class PortableFormat:
    """How ``landseg export`` writes one format: its file suffix and its writer.

    ``write(network, in_channels, tile, destination, text, props)``: ``text`` is landseg's
    metadata (JSON), ``props`` string key/values a format may carry besides (ONNX's
    ``metadata_props``, which QGIS Deepness reads).
    """

    suffix: str
    write: Callable[[torch.nn.Module, int, int, Path, str, dict[str, str]], Path]
    #: How a STAC item (MLM extension) names it: the media type's framework, the artifact
    #: type and, where the extension has one, ``mlm:framework``.
    media_framework: str
    artifact_type: str
    mlm_framework: str | None = None


#: The formats of ``landseg export``: the names of :data:`landseg.config.choices.EXPORT_FORMATS`
#: whose ``portable`` info is true.
PORTABLE_WRITERS: Registry[PortableFormat] = Registry("landseg export format")


def _onnx(
    network: torch.nn.Module, channels: int, tile: int, path: Path, text: str, props: dict[str, str]
) -> Path:
    return export_onnx(network, channels, tile, path, props)


def _portable_torchscript(
    network: torch.nn.Module, channels: int, tile: int, path: Path, text: str, props: dict[str, str]
) -> Path:
    return export_torchscript(network, channels, tile, path, text)


def _encoder(
    network: torch.nn.Module, channels: int, tile: int, path: Path, text: str, props: dict[str, str]
) -> Path:
    return export_encoder(network, props.get("model_name", "?"), path, props)


PORTABLE_WRITERS.add("onnx", PortableFormat(".onnx", _onnx, "onnx", "onnx", "ONNX"))
PORTABLE_WRITERS.add(
    "torchscript", PortableFormat(".pt", _portable_torchscript, "pytorch", "torch.jit.save")
)
PORTABLE_WRITERS.add(
    "encoder",
    PortableFormat("-encoder.safetensors", _encoder, "pytorch", "safetensors"),
)
check_implements(formats_for("checkpoint"), CHECKPOINT_WRITERS)
check_implements(formats_for("portable"), PORTABLE_WRITERS)
