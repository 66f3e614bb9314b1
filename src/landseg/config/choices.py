"""The named choices of a config and of the command line, each with what it means.

Why the names live here and their implementations elsewhere. A choice is named in a config
(``prediction_output_type``, ``export_checkpoint``, the ``cross_validation`` key that says
where groups come from) and on the command line (``--type``, ``--format``); the code that
carries it out lives higher up: :mod:`landseg.inference.scene` writes the output types,
:mod:`landseg.models.export` the export formats, :mod:`landseg.jobs.plan` reads the group
sources. ``config/`` may not import those layers, yet the schema's literals and
``docs/configuration.md`` need the names and their meanings, and so does the parser. So:

- this module is the one list of each choice: a :class:`~landseg.core.registry.Registry`
  of names, whose entries are their descriptions (``info`` says what the lower layers must
  know of an entry, e.g. whether an output type is a class map);
- the schema's literals (:func:`literal`) and descriptions (:func:`describe`), the parser's
  ``choices`` and its help are made from it;
- each implementation registers under the same names in a registry of its own folder, and
  :func:`~landseg.core.registry.check_implements` refuses, when that module is imported, a
  registry that lacks a name of this list or has one more.

A new output type, export format or group source is therefore added here (its name and
meaning) and implemented in its own module; nothing else lists it (docs/design.md, "Where a
new part goes").
"""

from __future__ import annotations

from typing import Any, Literal

from landseg.core.registry import Registry


def describe(choices: Registry[str], names: list[str] | None = None) -> str:
    """``"a: what a means; b: what b means"`` for the schema's and the parser's help."""
    return "; ".join(f"{name}: {choices.get(name)}" for name in names or choices.names())


def literal(choices: Registry[str]) -> Any:
    """``Literal["a", "b", ...]`` of the names, for a pydantic field (mypy sees ``str``)."""
    return Literal[tuple(choices.names())]


# ---------------------------------------------------------------------------- output types

#: ``output_setup.prediction_output_type`` and ``landseg predict --type``: what a prediction
#: raster holds. ``info``: ``class_map`` (one band of class indices, coloured; vectors are made
#: from it), ``max_classes`` (the most classes its values hold, or None).
OUTPUT_TYPES: Registry[str] = Registry("prediction output type")
OUTPUT_TYPES.add("bit", "one-hot class bands (0/1)", class_map=False, max_classes=None)
OUTPUT_TYPES.add(
    "uint8",
    "per-class probabilities x 255 (at most 254, 255 = nodata)",
    class_map=False,
    max_classes=None,
)
OUTPUT_TYPES.add("float32", "per-class probabilities", class_map=False, max_classes=None)
OUTPUT_TYPES.add(
    "classes",
    "(landseg) one uint8 band of class indices (nodata 255) with a colour table, and a QGIS "
    "style (.qml of the same name) beside it",
    class_map=True,
    max_classes=255,
)


def class_map_types() -> list[str]:
    """The output types that are class maps (one band of class indices)."""
    return [name for name in OUTPUT_TYPES.names() if OUTPUT_TYPES.info(name)["class_map"]]


# ---------------------------------------------------------------------------- export formats

#: The formats a network is written in. ``info`` says what each use writes, or None where the
#: use does not offer it: ``checkpoint`` (``train_setup.export_checkpoint``: the bare network,
#: beside each saved checkpoint), ``portable`` (``landseg export``: softmax in the graph, fixed
#: tile size, landseg's metadata, for use without landseg). ``predicts``: the file is a whole
#: model that predicts (``landseg predict --model`` runs it, a STAC item describes it), not a
#: part of one (default true).
EXPORT_FORMATS: Registry[str] = Registry("export format")
EXPORT_FORMATS.add(
    "pth",
    "PyTorch weights",
    checkpoint="<name>.pth, the network's state_dict, for torch.load(weights_only=True)",
    portable=None,
)
EXPORT_FORMATS.add(
    "torchscript",
    "TorchScript, for torch.jit.load",
    checkpoint="<name>.torchscript.pt, the network traced on 64 px tiles",
    portable="<base>.pt, with the softmax and its metadata",
)
EXPORT_FORMATS.add(
    "onnx",
    "ONNX (needs the onnx extra)",
    checkpoint=None,
    portable="<base>.onnx, with the softmax and its metadata, also for QGIS Deepness",
)
EXPORT_FORMATS.add(
    "encoder",
    "the trained encoder alone (safetensors), to start another run from",
    checkpoint=None,
    portable="<base>-encoder.safetensors, the encoder's weights with its bands and "
    "normalisation, for another run's model_params.encoder_weights",
    predicts=False,
)


def formats_for(use: Literal["checkpoint", "portable"]) -> list[str]:
    """The formats of ``export_checkpoint`` (``checkpoint``) or ``landseg export``."""
    return [name for name in EXPORT_FORMATS.names() if EXPORT_FORMATS.info(name)[use]]


def predicting_formats() -> list[str]:
    """The formats of ``landseg export`` that are whole models (``predict --model`` runs them)."""
    return [
        name for name in formats_for("portable") if EXPORT_FORMATS.info(name).get("predicts", True)
    ]


def describe_formats(use: Literal["checkpoint", "portable"]) -> str:
    """``"name: what this use writes; ..."`` for the formats of ``use``."""
    return "; ".join(f"{name}: {EXPORT_FORMATS.info(name)[use]}" for name in formats_for(use))


# ---------------------------------------------------------------------------- group sources

#: Where a cross-validation job's groups come from: each name is a key of the
#: ``cross_validation`` section, exactly one of which is set.
GROUP_SOURCES: Registry[str] = Registry("group source")
GROUP_SOURCES.add("group_column", "a CSV column such as zone")
GROUP_SOURCES.add("group_pattern", "a regular expression on the image path")
GROUP_SOURCES.add("spatial_blocks", "blocks of the map, from the tiles' georeferencing")
