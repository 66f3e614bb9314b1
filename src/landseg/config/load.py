"""Config file -> validated :class:`LandsegConfig`, with every problem reported at once.

Each problem is one line that names the key path (``train_setup.optimizer_config.momentum``),
what was expected and, for an unknown key, the valid one meant: another tool's name for it
(``learning_rate`` -> ``lr``, :data:`KEY_SYNONYMS`) or the closest spelling. Syntax errors
name the file, line and column.
"""

from __future__ import annotations

import datetime
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from landseg.config.overrides import apply_overrides
from landseg.config.schema import LandsegConfig
from landseg.core.errors import ConfigError
from landseg.core.registry import closest


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML config file into a dict (no validation yet)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from error
    if path.suffix.lower() == ".json":
        data = _parse_json(text, path)
    elif path.suffix.lower() in {".yaml", ".yml"}:
        data = _parse_yaml(text, path)
    else:  # unknown extension: JSON if it parses, else YAML
        try:
            data = _json_loads(text)
        except json.JSONDecodeError:
            data = _parse_yaml(text, path)
        except _KeyGivenTwice as error:
            raise error.config_error(path) from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {_kind(data)}")
    return data


class _KeyGivenTwice(ValueError):
    """A key given twice in one mapping of a config (``line``: 1-based, YAML only)."""

    def __init__(self, key: Any, line: int | None = None):
        super().__init__(key)
        self.key, self.line = key, line

    def config_error(self, path: Path) -> ConfigError:
        where = f":{self.line}" if self.line is not None else ""
        return ConfigError(
            f"{path}{where}: key {self.key!r} is given twice in the same section: the second "
            "would silently replace the first; keep one"
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: the json module keeps the last of two."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _KeyGivenTwice(key)
        data[key] = value
    return data


def _json_loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_unique_keys)


def _parse_json(text: str, path: Path) -> Any:
    try:
        return _json_loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path}:{error.lineno}:{error.colno}: JSON syntax error: {error.msg}"
        ) from error
    except _KeyGivenTwice as error:
        raise error.config_error(path) from error


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last:
    a second ``train_setup:`` block would replace the whole first one without a word)."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise _KeyGivenTwice(key, key_node.start_mark.line + 1)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        loader = _StrictLoader(text)  # what yaml.load does, with this SafeLoader subclass
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _KeyGivenTwice as error:
        raise error.config_error(path) from error
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        raise ConfigError(f"{path}:{where}: YAML syntax error: {error.problem}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: YAML syntax error: {error}") from error


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class _KeyedBy:
    """Inside a ``dict[str, Model]`` field (``search.params``): the next part of a location
    is one of its keys, and the part after it a field of ``model``."""

    model: type[BaseModel]


def _field_target(annotation: Any) -> type[BaseModel] | _KeyedBy | None:
    """What a field's value is, for walking an error location: a model, a mapping of them."""
    if typing.get_origin(annotation) is dict:
        value_model = _first_model(typing.get_args(annotation)[-1])
        return _KeyedBy(value_model) if value_model is not None else None
    return _first_model(annotation)


def _step(
    current: type[BaseModel] | _KeyedBy | None, part: Any
) -> type[BaseModel] | _KeyedBy | None:
    """What holds the next part of a location after ``part`` (None below a plain value)."""
    if isinstance(part, int):  # a list index: the same thing holds the next part
        return current
    if current is None:
        return None
    if isinstance(current, _KeyedBy):
        return current.model
    field = current.model_fields.get(part)
    return _field_target(field.annotation) if field else None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (for key suggestions)."""
    current: type[BaseModel] | _KeyedBy | None = model
    for part in loc:
        current = _step(current, part)
    return current if isinstance(current, type) else None


def _clean_location(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags (``int``, ``list[int]``...) from an error location.

    Parts are kept while they name fields of the models along the path, keys of a mapping of
    models (``search.params.<setting>``) or list indices; below a plain value only indices.
    """
    kept: list[Any] = []
    current: type[BaseModel] | _KeyedBy | None = root
    for part in loc:
        if isinstance(part, int) or current is not None:
            kept.append(part)
        current = _step(current, part)
    return tuple(kept)


def _field_names(model: type[BaseModel]) -> list[str]:
    """The keys a config writes for ``model``'s fields (their alias where they have one)."""
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: Keys of other tools (Lightning, Keras, timm, scikit-learn...) -> landseg's key, as a path from
#: the config's root; the unknown-key message suggests it before any similarly spelt key.
KEY_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("learning_rate", "learningrate", "base_lr", "init_lr"), "train_setup.lr"),
    **dict.fromkeys(
        ("max_epochs", "num_epochs", "n_epochs", "nb_epochs", "epoch"), "train_setup.epochs"
    ),
    **dict.fromkeys(("batchsize", "bs", "train_batch_size"), "train_setup.batch_size"),
    **dict.fromkeys(("optimizer", "optim"), "train_setup.optimizer_config"),
    **dict.fromkeys(("scheduler", "lr_scheduler"), "train_setup.scheduler_config"),
    "weight_decay": "train_setup.optimizer_config.weight_decay",
    "momentum": "train_setup.optimizer_config.momentum",
    **dict.fromkeys(("seed", "random_state", "manual_seed"), "train_setup.random_seed"),
    **dict.fromkeys(("model", "arch", "architecture", "network"), "train_setup.model_name"),
    **dict.fromkeys(("criterion", "loss_function", "loss_fn"), "train_setup.loss"),
    **dict.fromkeys(("class_weights", "class_weight"), "train_setup.class_imbalance"),
    "patience": "train_setup.early_stopping.patience",
    **dict.fromkeys(("gpus", "gpu", "devices", "num_gpus", "device_ids"), "device_setup.device"),
    "accelerator": "device_setup.accelerator",
    "precision": "device_setup.precision",
    "strategy": "device_setup.strategy",
    "num_nodes": "device_setup.num_nodes",
    **dict.fromkeys(("num_workers", "workers"), "device_setup.num_workers"),
    **dict.fromkeys(
        ("output_dir", "out_dir", "save_dir", "log_dir", "default_root_dir"),
        "output_setup.output_folder",
    ),
    **dict.fromkeys(("experiment_name", "exp_name", "run_name"), "output_setup.name_exp_log"),
    **dict.fromkeys(("val_split", "validation_split", "val_ratio"), "data_source.percentage_val"),
    **dict.fromkeys(("in_channels", "input_channels"), "data_source.image_bands"),
}

#: Keys of other tools that have no landseg key: what to write instead.
KEY_NOTES: dict[str, str] = dict.fromkeys(
    ("num_classes", "n_classes", "nb_classes", "classes"),
    "no such key: the classes come from data_source.class_labels or data_source.mask_bands",
)


def unknown_key_hint(loc: tuple[Any, ...], valid: list[str]) -> str:
    """What to say of the unknown key at ``loc``: a synonym from another tool first (shown
    relative to the key's section when it lies in it), then the closest spelling."""
    key = str(loc[-1]).lower().replace("-", "_").replace(" ", "_")
    if key in KEY_NOTES:
        return f" ({KEY_NOTES[key]})"
    target = KEY_SYNONYMS.get(key)
    if target is not None:
        parent = format_location(tuple(part for part in loc[:-1] if not isinstance(part, int)))
        if parent and target.startswith(parent + "."):
            target = target.removeprefix(parent + ".")
        return f" (did you mean '{target}'?)"
    hint = closest(str(loc[-1]), valid) if valid else None
    return f" (did you mean '{hint}'?)" if hint else ""


def describe_validation_errors(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per pydantic error: key path, what was expected, what was given."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        loc = _clean_location(root, tuple(item["loc"]))
        key = format_location(loc)
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            valid = _field_names(parent) if parent else []
            suggestion = unknown_key_hint(loc, valid)
            lines.append(f"{key}: unknown key{suggestion}; valid keys: {', '.join(valid)}")
        elif kind == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            given = item.get("input")
            hint = _yaml_hint(given) if kind == "string_type" else ""
            lines.append(f"{key}: {message}, got {_short(given)}{hint}")
    # a union (e.g. int | str | list) yields one error per member: keep one line per key.
    unique: dict[str, str] = {}
    for line in lines:
        unique.setdefault(line.split(":", 1)[0], line)
    return list(unique.values())


def _yaml_hint(value: Any) -> str:
    """Why a value written as text arrived as something else: YAML 1.1 typed it."""
    if isinstance(value, bool):
        return " (YAML reads yes, no, on, off, true and false as booleans: quote the value)"
    if isinstance(value, (datetime.date, int, float)):
        # a JSON or YAML file, or --set (JSON first): an unquoted 1 is a number in all three
        return (
            ' (read as a number or a date: write it in quotes, as "1"; with --set, '
            'KEY=\'"1"\' or KEY=\'["1", "4"]\')'
        )
    return ""


def validate_config(data: dict[str, Any], source: Path | None = None) -> LandsegConfig:
    """Validate a raw config; relative paths are taken relative to the config file's folder."""
    try:
        config = LandsegConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_errors(error, LandsegConfig)) from error
    base = source.resolve().parent if source is not None else Path.cwd()
    return config.resolve_paths(base)


def load_config(path: str | Path, overrides: list[str] | None = None) -> LandsegConfig:
    """Read, override and validate a config file (schema only; see ``checks`` for the rest)."""
    path = Path(path)
    data = apply_overrides(read_config_file(path), overrides or [])
    return validate_config(data, path)
