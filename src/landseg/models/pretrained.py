"""Pretrained encoder weights: which file a weights name means, how a file's tensors match an
smp encoder, and how its first convolution takes any number of bands.

Reading a file is :func:`landseg.runs.checkpoints.read_weights_file`'s (``weights_only``,
safetensors); loading it into a model at the start of a run is
:mod:`landseg.planning.pretrained`'s. This module works on tensors and modules alone:

- :func:`match_encoder` pairs the file's keys with the encoder's after removing the usual
  prefixes on both sides (``module.``, ``_orig_mod.``, ``model.``, ``encoder.``,
  ``backbone.``, and ``model_params.encoder_weights_prefix``): smp's ``tu-`` encoders keep the
  timm model under ``model.``, so a timm file's ``conv1.weight`` is their
  ``model.conv1.weight``; a landseg checkpoint's ``model.encoder.conv1.weight`` is a ResNet
  encoder's ``conv1.weight``. timm's feature extractors flatten some module names
  (``stages.0`` -> ``stages_0``): a key left unmatched is tried with ``_`` and ``.`` alike.
- :func:`map_first_conv` gives the first convolution the image's bands: by band names where
  both sides have them, else smp's rule (``patch_first_conv``); the kernels are then scaled
  by M/N (M the weights' bands, N the image's), so that activations keep the magnitude they
  had with M bands.
- :func:`hub_weights_file` finds a weights name's file in the local Hugging Face or torch hub
  cache, and never downloads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landseg.core.errors import ConfigError

#: model_params keys of pretrained encoder weights: landseg reads them, smp never sees them.
PRETRAINED_PARAMS = ("encoder_weights", "encoder_bands", "encoder_weights_prefix")
#: Prefixes removed from both sides' keys before matching (DataParallel, torch.compile,
#: Lightning or timm wrappers, a whole network's encoder part, a detection backbone).
PREFIXES = ("module.", "_orig_mod.", "model.", "encoder.", "backbone.")
#: The safetensors metadata key that holds the weights' band names (a JSON list).
BAND_NAMES_KEY = "band_names"
_KEY = "train_setup.model_params"


# ---------------------------------------------------------------------------- band mapping


@dataclass(frozen=True)
class BandMapping:
    """Where each image band's first-layer kernel came from, and the factor applied."""

    rule: str  # "band names" or "smp" (band i takes pretrained band i mod M)
    weights_bands: int  # M
    image_bands: int  # N
    factor: float  # M / N, applied to every kernel of the first convolution
    #: (image band, its source): a pretrained band's name or index, "mean" or "sum"
    sources: list[tuple[str, str]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "weights_bands": self.weights_bands,
            "image_bands": self.image_bands,
            "factor": self.factor,
            "mapping": {band: source for band, source in self.sources},
        }

    def describe(self) -> str:
        pairs = ", ".join(f"{band} <- {source}" for band, source in self.sources)
        return f"{self.rule} rule, {pairs}, kernels x {self.factor:.4g}"


def _fold(name: str) -> str:
    return name.strip().lower()


def map_first_conv(
    weight: torch.Tensor,
    n_bands: int,
    image_bands: list[str] | None = None,
    weights_bands: list[str] | None = None,
) -> tuple[torch.Tensor, BandMapping]:
    """The pretrained first-layer kernels ``weight`` (out, M, kh, kw) for ``n_bands`` bands.

    With both band name lists (image: N names, weights: M names, compared without case), a
    band of both takes its pretrained kernel and any other band the mean kernel over the M
    bands. Without them, smp's ``patch_first_conv``: one band takes the sum of the M kernels,
    else band i takes kernel i mod M. Either way every kernel is then multiplied by M/N
    (timm's ``adapt_input_conv``, smp's rule; with one band, the sum is the mean times M).
    """
    m = int(weight.shape[1])
    if weights_bands is not None and len(weights_bands) != m:
        raise ValueError(
            f"{len(weights_bands)} weights band names ({', '.join(weights_bands)}) but the "
            f"weights' first convolution takes {m} bands"
        )
    factor = m / n_bands
    source = weight.detach().float()
    if image_bands is not None and weights_bands is not None:
        position = {_fold(name): i for i, name in enumerate(weights_bands)}
        mean = source.mean(dim=1)
        kernels, sources = [], []
        for name in image_bands:
            index = position.get(_fold(name))
            kernels.append(mean if index is None else source[:, index])
            sources.append((name, "mean" if index is None else weights_bands[index]))
        mapped = torch.stack(kernels, dim=1) * factor
        mapping = BandMapping("band names", m, n_bands, factor, sources)
    else:
        names = image_bands or [f"band {i + 1}" for i in range(n_bands)]
        if n_bands == 1:
            mapped = source.sum(dim=1, keepdim=True)  # smp's rule, to the bit: the mean x M/1
            sources = [(names[0], "mean")]
        else:
            mapped = torch.stack([source[:, i % m] for i in range(n_bands)], dim=1) * factor
            sources = [
                (names[i], weights_bands[i % m] if weights_bands else f"band {i % m + 1}")
                for i in range(n_bands)
            ]
        mapping = BandMapping("smp", m, n_bands, factor, sources)
    return mapped.to(weight.dtype), mapping


def weights_band_names(metadata: dict[str, str]) -> list[str] | None:
    """The band names a weights file's metadata gives (``band_names``: a JSON list of
    strings), or None; ValueError for a value that is no such list."""
    text = metadata.get(BAND_NAMES_KEY)
    if text is None:
        return None
    try:
        names = json.loads(text)
    except ValueError as error:
        raise ValueError(f"its {BAND_NAMES_KEY} metadata is not JSON ({error})") from error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ValueError(f"its {BAND_NAMES_KEY} metadata is not a JSON list of names")
    return names


# ---------------------------------------------------------------------------- matching


def first_conv_key(state: dict[str, torch.Tensor], n_bands: int) -> str | None:
    """The encoder's first convolution: its first 4-D weight that takes ``n_bands`` bands."""
    return next((k for k, v in state.items() if v.ndim == 4 and int(v.shape[1]) == n_bands), None)


def canonical_key(key: str, prefixes: Iterable[str] = PREFIXES) -> str:
    """``key`` without any leading run of the known prefixes."""
    prefixes = tuple(prefixes)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if prefix and key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _optional(key: str) -> bool:
    """BatchNorm's step counter: not a weight; a file without it loses nothing."""
    return key.endswith("num_batches_tracked")


@dataclass(frozen=True)
class EncoderMatch:
    """How a file's tensors match an encoder: what loads, what is missing or left over."""

    state: dict[str, torch.Tensor]  # the encoder's keys -> the tensors to load
    total: int  # the encoder's tensors (BatchNorm step counters left out)
    missing: list[str]  # the encoder's, not in the file
    unexpected: list[str]  # the file's, not the encoder's (a classifier head...)
    #: (encoder key, file key, shape in the file, shape in the encoder)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]]
    first_conv: str | None
    bands: BandMapping | None  # None: the first convolution was not in the file

    @property
    def loaded(self) -> int:
        return sum(1 for key in self.state if not _optional(key))

    def problem(self) -> str | None:
        """Why these weights are refused (another architecture), or None."""
        if self.mismatched:
            key, there, given, own = self.mismatched[0]
            return (
                f"{self.loaded} of the encoder's {self.total} tensors fit, but "
                f"{len(self.mismatched)} have another shape (first: {key}, {tuple(given)} in "
                f"the file as {there}, {tuple(own)} in the encoder): weights of another "
                "architecture?"
            )
        if 2 * self.loaded < self.total:
            first = self.missing[0] if self.missing else "?"
            other = f"; the file has e.g. {self.unexpected[0]}" if self.unexpected else ""
            return (
                f"only {self.loaded} of the encoder's {self.total} tensors are in the file "
                f"(first missing: {first}{other}): weights of another architecture, or "
                "another prefix (model_params.encoder_weights_prefix)?"
            )
        return None

    def record(self) -> dict[str, Any]:
        return {
            "loaded": self.loaded,
            "total": self.total,
            "missing": list(self.missing),
            "unexpected": len(self.unexpected),
            "unexpected_examples": self.unexpected[:5],
            "first_conv": self.first_conv,
            "bands": self.bands.record() if self.bands else None,
        }


def match_encoder(
    encoder: nn.Module,
    tensors: dict[str, torch.Tensor],
    n_bands: int,
    *,
    prefix: str | None = None,
    image_bands: list[str] | None = None,
    weights_bands: list[str] | None = None,
) -> EncoderMatch:
    """Pair ``tensors`` (a file's) with ``encoder``'s weights; map the first convolution.

    Every shape must agree except the first convolution's band axis (``n_bands`` in the
    encoder); :meth:`EncoderMatch.problem` says whether the match is refused. The encoder
    may live on the meta device (shapes are all that is read from it).
    """
    own = encoder.state_dict()
    prefixes = (*([prefix] if prefix else []), *PREFIXES)
    by_canon: dict[str, str] = {}
    by_loose: dict[str, str] = {}
    for key in tensors:
        canon = canonical_key(key, prefixes)
        by_canon.setdefault(canon, key)
        by_loose.setdefault(canon.replace("_", "."), key)
    first = first_conv_key(own, n_bands)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    bands: BandMapping | None = None
    for key, value in own.items():
        canon = canonical_key(key, prefixes)
        found = by_canon.get(canon) or by_loose.get(canon.replace("_", "."))
        if found is None or found in used:
            if not _optional(key):
                missing.append(key)
            continue
        used.add(found)
        given = tensors[found]
        if given.shape == value.shape and key != first:
            state[key] = given
        elif key == first and given.ndim == 4 and _same_but_bands(given, value):
            state[key], bands = map_first_conv(given, n_bands, image_bands, weights_bands)
        else:
            mismatched.append((key, found, tuple(given.shape), tuple(value.shape)))
    return EncoderMatch(
        state=state,
        total=sum(1 for key in own if not _optional(key)),
        missing=missing,
        unexpected=[key for key in tensors if key not in used],
        mismatched=mismatched,
        first_conv=first,
        bands=bands,
    )


def _same_but_bands(given: torch.Tensor, own: torch.Tensor) -> bool:
    return given.shape[0] == own.shape[0] and given.shape[2:] == own.shape[2:]


def load_match(encoder: nn.Module, match: EncoderMatch) -> None:
    """Copy a match's tensors into ``encoder`` (what the file lacks stays as built)."""
    with torch.no_grad():
        own = encoder.state_dict()
        for key, value in match.state.items():
            own[key].copy_(value.to(own[key].dtype))


def export_record(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What an export says of the encoder weights its run started from (run.json's
    ``encoder_weights``): the file's name, size and SHA-256, what it was named as, the
    tensors loaded."""
    if not record:
        return None
    keys = ("file", "size", "sha256", "source", "loaded", "total")
    return {key: record.get(key) for key in keys}


# ---------------------------------------------------------------------------- weights names


@dataclass(frozen=True)
class HubFile:
    """A file a weights name stands for: a Hugging Face repo's file, or a torch hub URL's."""

    repo_id: str | None
    filename: str
    revision: str | None = None
    url: str | None = None


def hf_cache() -> str:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE`` as set now, else the library's)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or str(constants.HF_HUB_CACHE)


def hub_files(encoder_name: str, weights: str | bool) -> list[HubFile]:
    """The files smp (0.6) or timm would download for this weights name, in their order.

    smp's own encoders: ``model.safetensors`` of the weights' ``smp-hub/<encoder>.<name>``
    repo at its pinned revision; ``tu-`` encoders: timm's pretrained config (its Hugging
    Face repo's ``model.safetensors`` or ``pytorch_model.bin``, else its URL's file in the
    torch hub cache).
    """
    if encoder_name.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(encoder_name[3:])
        if cfg is None:
            return []
        files = []
        if cfg.hf_hub_id:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
            names = names or ["model.safetensors", "pytorch_model.bin"]
            files += [HubFile(repo, name, revision or None) for name in names]
        url = cfg.url if isinstance(cfg.url, str) else None
        if url and not url.endswith(".npz"):  # timm reads .npz (JAX) weights its own way
            files.append(HubFile(None, url.rsplit("/", 1)[-1], url=url))
        return files
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(weights)
    if not settings:
        return []
    return [HubFile(settings["repo_id"], "model.safetensors", settings.get("revision"))]


def torch_hub_checkpoints() -> Path:
    """torch hub's folder of downloaded weights (``$TORCH_HOME/hub/checkpoints``): torch's
    folder, not a run's checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(hub: HubFile) -> Path | None:
    """Where ``hub`` lies in the local cache, or None; never downloads."""
    if hub.repo_id is None:
        path = torch_hub_checkpoints() / hub.filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    for revision in dict.fromkeys([hub.revision, None]):  # the pinned snapshot, else main's
        found = try_to_load_from_cache(
            hub.repo_id, hub.filename, cache_dir=hf_cache(), revision=revision
        )
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def hub_weights_file(encoder_name: str, weights: str | bool) -> Path:
    """The cached file of smp's (or timm's) weights name; ConfigError (one line) saying which
    file to place where when no cache holds it. Nothing is downloaded."""
    files = hub_files(encoder_name, weights)
    for hub in files:
        found = cached_file(hub)
        if found is not None:
            return found
    if not files:
        raise ConfigError(
            f"{_KEY}.encoder_weights: encoder '{encoder_name}' has no {weights!r} weights to "
            "look up; give the path of a weights file"
        )
    what = "pretrained" if weights is True else repr(weights)
    raise ConfigError(
        f"{_KEY}.encoder_weights: the {what} weights of encoder '{encoder_name}' are not in "
        f"the local caches, and landseg downloads nothing: place {_places(files)}, or set "
        "encoder_weights to the path of a weights file"
    )


def _places(files: list[HubFile]) -> str:
    """Where each of ``files`` would be found: a Hugging Face repo's files (fetched with
    ``hf download REPO FILE`` where there is network, then the cache copied), or a torch hub
    checkpoint."""
    places: list[str] = []
    repos: dict[tuple[str, str | None], list[str]] = {}
    for hub in files:
        if hub.repo_id is None:
            folder = torch_hub_checkpoints()
            places.append(f"{hub.filename} (from {hub.url}) in {folder}")
        else:
            repos.setdefault((hub.repo_id, hub.revision), []).append(hub.filename)
    hf = [
        f"{repo} {' or '.join(names)}{f' (revision {revision})' if revision else ''} in the "
        f"Hugging Face cache {hf_cache()} (`hf download {repo} {names[0]}"
        f"{f' --revision {revision}' if revision else ''}` where there is network)"
        for (repo, revision), names in repos.items()
    ]
    return " or ".join(hf + places)
