"""``model_params.encoder_weights``: the weights file a config names, checked against its model
before anything is written, and loaded into the network when a new run starts.

The file is read by :func:`landseg.runs.checkpoints.read_weights_file` (``weights_only``,
safetensors) and matched with the encoder by :mod:`landseg.models.pretrained`; this module,
above both, joins them, so that ``landseg validate`` and ``landseg train`` refuse a file with
the same one line (:func:`encoder_weights_problems`) and training loads exactly what was
checked (:func:`load_encoder_weights`).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landseg.config.schema import LandsegConfig, TrainSetup, is_weights_path
from landseg.core.errors import ConfigError
from landseg.models.pretrained import (
    EncoderMatch,
    hub_weights_file,
    load_match,
    match_encoder,
    weights_band_names,
)
from landseg.models.registry import MODELS, build_model, model_problems
from landseg.runs.checkpoints import WeightsFile, WeightsFileError, read_weights_file

log = logging.getLogger("landseg.pretrained")

KEY = "train_setup.model_params.encoder_weights"


def weights_source(train: TrainSetup) -> tuple[Path, str] | None:
    """The file ``encoder_weights`` names and what it was named as (``file``, or the weights
    name found in a local cache), or None for random weights.

    Raises :class:`ConfigError` (one line) for a weights name no local cache holds.
    """
    weights = train.model_params.get("encoder_weights")
    if weights is None or weights is False:
        return None
    if is_weights_path(weights):
        return Path(str(weights)).expanduser(), "file"
    encoder = MODELS.info(train.model_name).get("encoder") or train.model_params.get(
        "encoder_name", "resnet34"
    )
    return hub_weights_file(str(encoder), weights), f"{weights} (local cache)"


def _encoder(model: nn.Module, train: TrainSetup) -> nn.Module:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(f"{KEY}: model '{train.model_name}' has no encoder to load weights into")
    return encoder


def match_weights(
    model: nn.Module, config: LandsegConfig, n_bands: int, file: WeightsFile
) -> EncoderMatch:
    """``file``'s tensors matched with ``model``'s encoder, its first convolution mapped to
    the image's bands; ConfigError (one line naming the file) when they are refused."""
    train, data = config.train_setup, config.data_source
    params = train.model_params
    image_bands = data.band_names
    if image_bands is not None and len(image_bands) != n_bands:
        raise ConfigError(
            f"data_source.band_names: {len(image_bands)} names but the model reads {n_bands} "
            "bands; give one name per band, in their order"
        )
    weights_bands = params.get("encoder_bands")
    if weights_bands is None:
        try:
            weights_bands = weights_band_names(file.metadata)
        except ValueError as error:
            raise ConfigError(f"{KEY}: {file.path}: {error}") from error
    try:
        match = match_encoder(
            _encoder(model, train),
            file.tensors,
            n_bands,
            prefix=params.get("encoder_weights_prefix"),
            image_bands=image_bands,
            weights_bands=weights_bands,
        )
    except ValueError as error:  # band names that do not fit the first convolution
        raise ConfigError(f"{KEY}: {file.path}: {error}") from error
    problem = match.problem()
    if problem is not None:
        raise ConfigError(f"{KEY}: {file.path}: {problem}")
    return match


def _read(source: Path) -> WeightsFile:
    try:
        return read_weights_file(source)
    except WeightsFileError as error:
        raise ConfigError(f"{KEY}: {error.problems[0]}") from error


def load_encoder_weights(
    model: nn.Module, config: LandsegConfig, n_bands: int
) -> dict[str, Any] | None:
    """Load ``encoder_weights`` into ``model.encoder`` (a new run's network); the record for
    run.json and the exports (file name, size, SHA-256, tensor counts, band mapping), or
    None when the config sets no weights. Raises ConfigError (one line) for a refused file.
    """
    found = weights_source(config.train_setup)
    if found is None:
        return None
    path, source = found
    file = _read(path)
    match = match_weights(model, config, n_bands, file)
    load_match(_encoder(model, config.train_setup), match)
    record = {**file.record(), "source": source, "container": file.container, **match.record()}
    unexpected = (
        f"{len(match.unexpected)} unused (e.g. {', '.join(match.unexpected[:3])})"
        if match.unexpected
        else "none unused"
    )
    log.info(
        "encoder weights from %s (%s, sha256 %s): %d of %d tensors loaded, %s missing, %s",
        path,
        source,
        record["sha256"][:12],
        match.loaded,
        match.total,
        ", ".join(match.missing[:5]) + ("..." if len(match.missing) > 5 else "")
        if match.missing
        else "none",
        unexpected,
    )
    if match.bands is not None:
        log.info("first convolution %s: %s", match.first_conv, match.bands.describe())
    return record


def encoder_weights_problems(config: LandsegConfig, n_bands: int | None) -> list[str]:
    """What ``landseg validate`` and ``train`` say of ``encoder_weights`` before anything is
    written: a weights name no cache holds, a file that is missing, no weights file, unsafe,
    or of another architecture (one line each). ``n_bands``: the bands the model reads
    (None: not known yet; the file is matched with a 3-band model, the first convolution's
    band axis being free anyway)."""
    train = config.train_setup
    if train.model_params.get("encoder_weights") in (None, False):
        return []
    if model_problems(train.model_name, train.model_params, None):
        return []  # reported by the model's own check
    try:
        found = weights_source(train)
        if found is None:
            return []
        file = _read(found[0])
        bands = n_bands or len(config.data_source.band_names or []) or 3
        model = _shape_only_model(train, bands)
        match_weights(model, config, bands, file)
    except ConfigError as error:
        return error.problems
    return []


def encoder_weights_plan(config: LandsegConfig, n_bands: int) -> list[str]:
    """What ``landseg validate`` prints of a new run's start from pretrained weights and of its
    fine-tuning controls (the file, the tensors that load, the first layer's band mapping),
    so that a wrong band order shows before training, not after."""
    train = config.train_setup
    lines = []
    found = weights_source(train) if train.model_params.get("encoder_weights") else None
    if found is not None:
        path, source = found
        match = match_weights(_shape_only_model(train, n_bands), config, n_bands, _read(path))
        lines.append(
            f"encoder weights from {path} ({source}): {match.loaded} of {match.total} "
            f"tensors load, {len(match.missing)} missing, {len(match.unexpected)} unused"
        )
        if match.bands is not None:
            lines.append(f"first convolution {match.first_conv}: {match.bands.describe()}")
    frozen = train.freeze_encoder_epochs
    if frozen:
        whole = " (the whole run)" if frozen >= train.epochs else ""
        lines.append(f"encoder frozen for the first {frozen} epochs{whole}")
    if train.encoder_lr_factor != 1:
        lines.append(f"encoder learning rate {train.encoder_lr_factor:g} x the rest's")
    return lines


def _shape_only_model(train: TrainSetup, n_bands: int) -> nn.Module:
    """The network, on the meta device where it builds there (no memory, no initialisation):
    matching reads its shapes alone."""
    with suppress(Exception), torch.device("meta"):
        return build_model(train.model_name, n_bands, 2, train.model_params)
    return build_model(train.model_name, n_bands, 2, train.model_params)
