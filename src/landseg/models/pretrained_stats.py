"""The normalisation that pretrained encoder weights were trained with, and which image band
gets which.

An encoder trained on ImageNet expects its inputs standardised with ImageNet's mean and std; a
Sentinel-2 encoder with its own. When ``data_source.normalization_weights`` is not set, a run
that starts from such weights uses their mean and std (see ``landseg.planning.prepare``).
This module finds them, without any download:

- a ``.safetensors`` file's own metadata: ``mean`` and ``std`` (JSON lists, 0-1 range) with
  ``band_names`` saying which band each is for (what ``landseg export --format encoder``
  writes);
- a ``config.json`` beside the file with ``mean``/``std`` (what a Hugging Face download of an
  smp-hub or timm repository puts there);
- torchgeo's weight metadata, where torchgeo is installed: the file is matched to a torchgeo
  weights enum by the file name of its URL, and the ``Normalize`` steps of its transforms are
  composed into one mean and std, in the images' own pixel units;
- a timm encoder named with its pretrained tag (``tu-resnet50.a1_in1k``): timm's pretrained
  config (no download);
- an smp hub name (``imagenet``...): the ``config.json`` of its ``smp-hub/<encoder>.<weights>``
  repository in the local Hugging Face cache.

:func:`pretrained_normalization` then gives each image band a mean and std: with band names on
both sides, a band the weights know takes its own; a band they do not know (a fourth band on
RGB weights) takes the mean of the weights' means and the mean of their stds, the statistics
of a typical band of the data the encoder saw (its first convolution initialises such a band
from the mean of the pretrained kernels, the same choice). Without names, smp's first-layer
rule decides: image band ``i`` is weights band ``i % M`` (a single band, whose kernel is the
sum of the pretrained ones, takes the mean of them all).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landseg.config.schema import is_weights_path

log = logging.getLogger("landseg.models")

#: What an image band takes when the weights do not know its name.
MEAN_OF_BANDS = "mean of the weights' bands"
#: The file a Hugging Face model repository describes itself in (smp-hub: ``mean``, ``std``,
#: ``input_range``; timm: ``pretrained_cfg``), not a run folder's config.
HUB_CONFIG = "config.json"


@dataclass(frozen=True)
class WeightsStats:
    """The mean and std one weights file or name was trained with, per weights band.

    ``pixel_units``: the values are in the images' own pixel units (torchgeo's transforms
    normalise raw reflectances), to be divided by the run's pixel range; otherwise they are in
    the 0-1 range, as ``data_source.normalization_weights``.
    """

    mean: list[float]
    std: list[float]
    band_names: list[str] | None
    origin: str
    pixel_units: bool = False


@dataclass(frozen=True)
class BandNormalization:
    """A mean and std per image band, and where each came from (a weights band's name, its
    position ``"weights band 2"``, or :data:`MEAN_OF_BANDS`)."""

    mean: list[float]
    std: list[float]
    sources: list[str]


def pretrained_normalization(
    n_bands: int,
    image_band_names: Sequence[str] | None,
    weights_band_names: Sequence[str] | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> BandNormalization:
    """Each of ``n_bands`` image bands' mean and std from the weights' per-band ``mean``/``std``.

    With both band lists: a band whose name (case-insensitive) the weights have takes that
    band's values; another takes the mean of the weights' means and of their stds. Without
    one of them, smp's first-convolution rule: image band ``i`` takes weights band ``i % M``,
    and a single band (whose kernel is the sum of the pretrained ones) the mean of them all.
    Raises ValueError when the lists do not fit (lengths, a std <= 0, names not one per band).
    """
    m = len(mean)
    if m == 0 or len(std) != m:
        raise ValueError(f"{m} mean and {len(std)} std value(s): need one of each per band")
    if any(not s > 0 for s in std):
        raise ValueError(f"a std value is not > 0: {list(std)}")
    if weights_band_names is not None and len(weights_band_names) != m:
        raise ValueError(
            f"{len(weights_band_names)} weights band name(s) for {m} mean/std value(s)"
        )
    if image_band_names is not None and len(image_band_names) != n_bands:
        raise ValueError(f"{len(image_band_names)} band name(s) for {n_bands} image band(s)")
    means, stds, sources = [], [], []
    if image_band_names is not None and weights_band_names is not None:
        index = {_fold(name): i for i, name in enumerate(weights_band_names)}
        for name in image_band_names:
            i = index.get(_fold(name))
            if i is None:
                means.append(sum(mean) / m)
                stds.append(sum(std) / m)
                sources.append(MEAN_OF_BANDS)
            else:
                means.append(float(mean[i]))
                stds.append(float(std[i]))
                sources.append(str(weights_band_names[i]))
        return BandNormalization(means, stds, sources)
    if n_bands == 1 and m > 1:  # smp's one-band rule: the sum of the kernels sees every band
        return BandNormalization([sum(mean) / m], [sum(std) / m], [MEAN_OF_BANDS])
    for band in range(n_bands):
        i = band % m
        means.append(float(mean[i]))
        stds.append(float(std[i]))
        names = weights_band_names
        sources.append(str(names[i]) if names is not None else f"weights band {i + 1}")
    return BandNormalization(means, stds, sources)


def _fold(name: object) -> str:
    """Band names match case-insensitively, as the first convolution's mapping matches them."""
    return str(name).strip().casefold()


# ---------------------------------------------------------------------------- where they are


def weights_file_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file ({} for another file or none)."""
    if Path(path).suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # unreadable: the weights loader says why; no statistics from it
        return {}


def weights_path(value: str | Path, base: Path | None) -> Path:
    """``encoder_weights`` as a file: ``~`` expanded, relative to the config's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else base / path


def weights_stats(
    encoder: str | None, weights: Any, base: Path | None = None
) -> WeightsStats | None:
    """The mean and std of ``model_params.encoder_weights`` (a file, a hub name, true for a
    timm encoder), or None where they are not known without a download."""
    if weights is None or weights is False or encoder is None:
        return None
    if is_weights_path(weights):
        path = weights_path(weights, base)
        return (
            _file_stats(path)
            or _beside_stats(path)
            or torchgeo_stats(path)
            or (_timm_stats(encoder) if "." in encoder else None)
        )
    if encoder.startswith("tu-"):
        return _timm_stats(encoder)
    if isinstance(weights, str):
        return _smp_hub_stats(encoder, weights)
    return None


def _floats(text: Any) -> list[float] | None:
    try:
        values = json.loads(text) if isinstance(text, str) else text
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
            return [float(v) for v in values]
    except ValueError:
        pass
    return None


def _names(text: Any) -> list[str] | None:
    try:
        values = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return None
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        return list(values)
    return None


def _file_stats(path: Path) -> WeightsStats | None:
    meta = weights_file_metadata(path)
    mean, std = _floats(meta.get("mean")), _floats(meta.get("std"))
    if mean is None or std is None:
        return None
    return WeightsStats(mean, std, _names(meta.get("band_names")), f"{path.name}'s metadata")


def _config_stats(config: Path, origin: str) -> WeightsStats | None:
    """``mean``/``std`` of a Hugging Face ``config.json`` (smp-hub: at the top level, with
    ``input_range``; timm: under ``pretrained_cfg``), in the 0-1 range."""
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    nested = data.get("pretrained_cfg")
    settings: dict[str, Any] = nested if isinstance(nested, dict) else data
    mean, std = _floats(settings.get("mean")), _floats(settings.get("std"))
    if mean is None or std is None:
        return None
    top = _floats(settings.get("input_range"))
    if top is not None and top[-1] > 1:  # statistics of 0-255 inputs
        mean, std = [v / top[-1] for v in mean], [v / top[-1] for v in std]
    return WeightsStats(mean, std, None, origin)


def _beside_stats(path: Path) -> WeightsStats | None:
    config = path.parent / HUB_CONFIG
    return _config_stats(config, str(config)) if config.is_file() else None


def _timm_stats(encoder: str) -> WeightsStats | None:
    """timm's pretrained config of ``tu-<model>[.<tag>]`` (no download)."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(encoder.removeprefix("tu-"))
    except Exception:  # not a timm model or tag: no statistics
        return None
    if cfg is None or not cfg.mean or not cfg.std:
        return None
    name = encoder.removeprefix("tu-")
    return WeightsStats(list(cfg.mean), list(cfg.std), None, f"timm's pretrained config of {name}")


def _smp_hub_stats(encoder: str, weights: str) -> WeightsStats | None:
    """The ``config.json`` of smp's ``smp-hub/<encoder>.<weights>`` in the local Hugging Face
    cache (smp downloads it with the weights)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[encoder]["pretrained_settings"][weights]
        found = try_to_load_from_cache(
            settings["repo_id"], HUB_CONFIG, revision=settings.get("revision")
        )
    except Exception:  # unknown encoder or weights: the model checks say so
        return None
    if not isinstance(found, str):
        return None
    return _config_stats(Path(found), f"{settings['repo_id']}'s {HUB_CONFIG}")


def torchgeo_stats(path: Path) -> WeightsStats | None:
    """torchgeo's weights whose URL ends with ``path``'s file name: its bands and the mean and
    std of its transforms (in pixel units); None without torchgeo or a match."""
    try:
        import torchgeo.models as tg
    except ImportError:
        return None
    for weights in _torchgeo_weights(tg):
        url = str(getattr(weights, "url", ""))
        if url.rsplit("/", 1)[-1] != path.name:
            continue
        meta = dict(getattr(weights, "meta", {}) or {})
        bands = meta.get("bands")
        n = int(meta.get("in_chans") or (len(bands) if bands else 0))
        composed = _compose_normalize(getattr(weights, "transforms", None), n)
        if composed is None:
            return None
        mean, std = composed
        names = [str(b) for b in bands] if bands and len(bands) == n else None
        return WeightsStats(mean, std, names, f"torchgeo's {weights}", pixel_units=True)
    return None


def _torchgeo_weights(tg: Any) -> list[Any]:
    """Every weights enum member torchgeo lists."""
    members: list[Any] = []
    try:
        for name in tg.list_models():
            members.extend(tg.get_model_weights(name))
    except Exception:  # an API this code does not know: no statistics
        return []
    return members


def _compose_normalize(transforms: Any, n: int) -> tuple[list[float], list[float]] | None:
    """The ``Normalize`` steps of kornia transforms as one ``(x - mean) / std`` per band:
    ``(x - m1) / s1`` then ``(. - m2) / s2`` is ``(x - (m1 + m2 s1)) / (s1 s2)``."""
    if transforms is None or n <= 0:
        return None
    mean, std = [0.0] * n, [1.0] * n
    steps = 0
    modules = transforms.modules() if hasattr(transforms, "modules") else []
    for module in modules:
        flags = getattr(module, "flags", None)
        if type(module).__name__ != "Normalize" or not isinstance(flags, dict):
            continue
        m = [float(v) for v in flags["mean"].flatten().tolist()]
        s = [float(v) for v in flags["std"].flatten().tolist()]
        m = m * n if len(m) == 1 else m
        s = s * n if len(s) == 1 else s
        if len(m) != n or len(s) != n:
            return None
        mean = [mean[i] + m[i] * std[i] for i in range(n)]
        std = [std[i] * s[i] for i in range(n)]
        steps += 1
    return (mean, std) if steps else None
