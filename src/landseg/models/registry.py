"""Model names (ODEON's train tool's, plus ``smp:<Architecture>``), their parameters and their
checks.

Every entry's ``info`` says which ``model_params`` keys it takes (with defaults), which values
some of them allow, and which multiple the input height and width must be, so a config is
checked before any training starts.

segmentation-models-pytorch and timm are imported only when a name or check needs them (an
``smp:`` model, an encoder with pretrained weights, the list of every model name): checking
the config of a landseg U-Net imports neither.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from landseg.config.schema import WEIGHTS_SUFFIXES, is_weights_path
from landseg.core.errors import ConfigError
from landseg.core.registry import Registry, unknown_name_message
from landseg.models.pretrained import PRETRAINED_PARAMS
from landseg.models.unet import DECODER_MODES, UNET_SIZE_MULTIPLE, UNet

ModelFactory = Callable[..., nn.Module]  # (in_channels, n_classes, **model_params) -> logits

MODELS: Registry[ModelFactory] = Registry("model")

SMP_PREFIX = "smp:"
#: smp keywords that landseg sets itself (bands, classes) or that would break "returns logits".
_SMP_RESERVED = {"self", "in_channels", "classes", "activation", "aux_params"}
_PARAMS_KEY = "train_setup.model_params"

MODELS.add(
    "unet",
    partial(UNet, base_width=64),
    size_multiple=UNET_SIZE_MULTIPLE,
    params={"decoder_mode": "bilinear", "batch_norm": True},
    choices={"decoder_mode": DECODER_MODES, "batch_norm": (True, False)},
)
MODELS.add(
    "lightunet",
    partial(UNet, base_width=8),
    size_multiple=UNET_SIZE_MULTIPLE,
    params={"decoder_mode": "bilinear", "batch_norm": False},
    choices={"decoder_mode": DECODER_MODES, "batch_norm": (True, False)},
)


def resnet_unet(in_channels: int, n_classes: int, **params: Any) -> nn.Module:
    from landseg.models import factory  # smp: imported when a model is built

    return factory.resnet_unet(in_channels, n_classes, **params)


def deeplab(in_channels: int, n_classes: int, **params: Any) -> nn.Module:
    from landseg.models import factory

    return factory.deeplab(in_channels, n_classes, **params)


def smp_model(arch: str, in_channels: int, n_classes: int, **params: Any) -> nn.Module:
    from landseg.models import factory

    return factory.smp_model(arch, in_channels, n_classes, **params)


for _depth in (18, 34, 50, 101, 152):
    MODELS.add(
        f"resnet{_depth}",
        partial(resnet_unet, depth=_depth),
        aliases=("resnet150",) if _depth == 152 else (),  # ODEON's docs list "resnet150", a slip
        size_multiple=32,
        params={"decoder_mode": "bilinear", **dict.fromkeys(PRETRAINED_PARAMS)},
        choices={"decoder_mode": DECODER_MODES},
        encoder=f"resnet{_depth}",
    )
MODELS.add(
    "deeplab",
    deeplab,
    size_multiple=8,
    size_multiple_fn=lambda params: params["output_stride"],
    params={"output_stride": 8, **dict.fromkeys(PRETRAINED_PARAMS)},
    choices={"output_stride": (8, 16)},
    encoder="mobilenet_v2",
)


def _smp_params(model_class: type[nn.Module]) -> dict[str, Any]:
    """The keywords an smp class accepts, with defaults; pretrained weights are opt-in."""
    signature = inspect.signature(model_class.__init__)
    params = {
        name: p.default
        for name, p in signature.parameters.items()
        if name not in _SMP_RESERVED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    params.update(dict.fromkeys(PRETRAINED_PARAMS))  # landseg's: smp never sees them
    return params


def _smp_size_multiple(params: dict[str, Any]) -> int:
    """The encoder's output stride: 2**depth, less when the encoder is dilated."""
    return min(int(params.get("encoder_output_stride") or 32), 2 ** int(params["encoder_depth"]))


_smp_registered = False


def register_smp_models() -> None:
    """Add ``smp:<architecture>`` for every smp architecture (once; imports smp)."""
    global _smp_registered
    if _smp_registered:
        return
    from landseg.models.factory import smp_architectures

    for arch, model_class in smp_architectures().items():
        defaults = _smp_params(model_class)
        MODELS.add(
            f"{SMP_PREFIX}{arch}",
            partial(smp_model, arch),
            size_multiple=_smp_size_multiple(defaults),
            size_multiple_fn=_smp_size_multiple,
            params=defaults,
            smp=True,
        )
    _smp_registered = True


def _known(name: str) -> bool:
    """Whether ``name`` is a model, registering the smp ones when they may be meant."""
    if name in MODELS:
        return True
    register_smp_models()
    return name in MODELS


def model_size_multiple(name: str, params: dict[str, Any] | None = None) -> int:
    """The multiple that input height and width must be, for this model and these params."""
    _known(name)
    info = MODELS.info(name)
    size_fn = info.get("size_multiple_fn")
    return int(size_fn({**info["params"], **(params or {})}) if size_fn else info["size_multiple"])


def _unknown_model(name: str) -> str:
    register_smp_models()
    if name.lower().startswith(SMP_PREFIX):
        choices = [n for n in MODELS.names() if n.startswith(SMP_PREFIX)]
        return unknown_name_message("smp architecture", name, choices)
    return unknown_name_message("model", name, MODELS.names())


def _encoder_problems(name: str, info: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Unknown smp/timm encoder names, and weights the encoder does not offer."""
    encoder = info.get("encoder") or params.get("encoder_name")
    if not isinstance(encoder, str):
        return [f"{_PARAMS_KEY}.encoder_name: must be a string, got {encoder!r}"]
    weights = params.get("encoder_weights")
    problems = _pretrained_param_problems(params)
    if info.get("encoder") and weights is None:
        return problems  # landseg's own encoder, random weights: nothing to look up in smp
    from segmentation_models_pytorch.encoders import encoders as smp_encoders
    from segmentation_models_pytorch.encoders import get_encoder_names

    is_timm = encoder.startswith("tu-")
    if is_timm and not _timm_has(encoder[3:]):
        return [f"{_PARAMS_KEY}.encoder_name: timm has no model '{encoder[3:]}'"]
    if not is_timm and encoder not in smp_encoders:
        return [
            f"{_PARAMS_KEY}.encoder_name: "
            + unknown_name_message("smp encoder", encoder, get_encoder_names())
            + ", or tu-<any timm model>"
        ]
    if weights is None or is_weights_path(weights):
        return problems  # a file: read and matched with the encoder by planning.pretrained
    a_file = f"or the path of a weights file ({', '.join(WEIGHTS_SUFFIXES)})"
    if is_timm:
        if weights is not True:
            return [
                f"{_PARAMS_KEY}.encoder_weights: timm encoder '{encoder}' takes true, null "
                f"{a_file}; the pretrained variant is part of its name (tu-<model>.<tag>)"
            ]
        return problems
    available = list(smp_encoders[encoder]["pretrained_settings"])
    if weights not in available:
        offered = ", ".join(available) or "none"
        return [
            f"{_PARAMS_KEY}.encoder_weights: encoder '{encoder}' of model '{name}' has no "
            f"{weights!r} weights; available: {offered}, null for random weights, {a_file}"
        ]
    return problems


def _pretrained_param_problems(params: dict[str, Any]) -> list[str]:
    """encoder_bands (unique names) and encoder_weights_prefix (a string), with weights."""
    problems = []
    bands, prefix = params.get("encoder_bands"), params.get("encoder_weights_prefix")
    if bands is not None:
        if not isinstance(bands, list) or not bands or not all(isinstance(b, str) for b in bands):
            problems.append(f"{_PARAMS_KEY}.encoder_bands: must be a list of band names")
        elif len({b.strip().lower() for b in bands}) != len(bands):
            repeated = sorted({b for b in bands if bands.count(b) > 1}) or bands
            problems.append(
                f"{_PARAMS_KEY}.encoder_bands: names must be unique; repeated: "
                f"{', '.join(repeated)}"
            )
    if prefix is not None and not isinstance(prefix, str):
        problems.append(f"{_PARAMS_KEY}.encoder_weights_prefix: must be a string")
    for key, value in (("encoder_bands", bands), ("encoder_weights_prefix", prefix)):
        if value is not None and params.get("encoder_weights") is None:
            problems.append(f"{_PARAMS_KEY}.{key}: applies to encoder_weights, which is not set")
    return problems


def _timm_has(model: str) -> bool:
    import timm

    return bool(timm.is_model(model))


def model_problems(
    name: str, params: dict[str, Any] | None, patch_size: tuple[int, int] | None
) -> list[str]:
    """Problems (one line each) with a model name, its params and the tile size, before training.

    ``patch_size`` None: the tiles are not known (yet), and their size is not checked.
    """
    if not _known(name):
        return [f"train_setup.model_name: {_unknown_model(name)}"]
    info = MODELS.info(name)
    defaults: dict[str, Any] = info["params"]
    params = params or {}
    problems = [
        f"{_PARAMS_KEY}.{key}: " + unknown_name_message(f"{name} parameter", key, list(defaults))
        for key in params
        if key not in defaults
    ]
    effective = {**defaults, **{k: v for k, v in params.items() if k in defaults}}
    for key, allowed in info.get("choices", {}).items():
        if effective[key] not in allowed:
            problems.append(
                f"{_PARAMS_KEY}.{key}: {effective[key]!r} is not allowed for model '{name}'; "
                f"choose one of: {', '.join(map(str, allowed))}"
            )
    if "encoder_weights" in defaults:
        problems += _encoder_problems(name, info, effective)
    if problems or patch_size is None:
        return problems
    try:
        multiple = model_size_multiple(name, effective)
    except (TypeError, ValueError, KeyError) as err:
        return [f"{_PARAMS_KEY}: cannot tell the input size model '{name}' needs ({err})"]
    height, width = patch_size
    if height % multiple or width % multiple:
        problems.append(
            f"train_setup.model_name: model '{name}' needs tile height and width that are "
            f"multiples of {multiple}, but the tiles are {height}x{width}"
        )
    return problems


def encoder_name(name: str, params: dict[str, Any] | None = None) -> str | None:
    """The smp encoder name of model ``name`` with ``params`` (``resnet34``, ``tu-...``), or
    None for landseg's own U-Nets, which have no separate encoder."""
    if not _known(name):
        return None
    info = MODELS.info(name)
    if info.get("encoder"):
        return str(info["encoder"])
    if "encoder_name" not in info["params"]:
        return None
    value = {**info["params"], **(params or {})}["encoder_name"]
    return str(value) if value is not None else None


def model_name_notes(name: str) -> list[str]:
    """What a user should know of a model name that is accepted as another (ODEON's
    ``resnet150``, a slip of its documentation, is ResNet-152)."""
    if _known(name) and MODELS.is_alias(name):
        return [
            f"train_setup.model_name: {name!r} is read as {MODELS.canonical(name)!r} "
            "(ResNet has no 150-layer network; ODEON's documentation lists it by mistake)"
        ]
    return []


def build_model(
    name: str, in_channels: int, n_classes: int, params: dict[str, Any] | None = None
) -> nn.Module:
    """The named model with random weights; bad params -> ConfigError.

    ``encoder_weights`` (and its encoder_bands, encoder_weights_prefix) are checked here but
    not loaded: a network is built from a checkpoint's hyperparameters for every prediction,
    export and resume, which must not need the weights file. A new run loads them into
    ``model.encoder`` (:func:`landseg.planning.pretrained.load_encoder_weights`).
    """
    params = params or {}
    problems = model_problems(name, params, None)
    if problems:
        raise ConfigError(problems)
    entry = MODELS.entry(name)
    kwargs = {**entry.info["params"], **params}
    for key in PRETRAINED_PARAMS:
        kwargs.pop(key, None)
    try:
        return entry.factory(in_channels, n_classes, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        raise ConfigError(
            f"{_PARAMS_KEY}: model '{name}' cannot be built with {params}: {err}"
        ) from err
