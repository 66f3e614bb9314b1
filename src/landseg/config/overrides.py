"""``--set KEY=VALUE``: the option, and how its values change a raw config.

Light on purpose: the command line builds its parser with :func:`add_overrides_argument`
before any config is read, so this module imports nothing heavy at its top.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from landseg.core.errors import ConfigError


def parse_override_value(text: str) -> Any:
    """Type a ``--set`` value: JSON first (numbers, booleans, lists), then YAML, then a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml  # here: the command line imports this module before any config is read

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) and text.lstrip().startswith("{"):
        return value  # a YAML flow mapping, written as one: {optimizer: sgd, momentum: 0.9}
    # "a: b" is YAML for a mapping and "~" for null: a value such as a name keeps its text
    return text if isinstance(value, (dict, type(None))) and text.strip() else value


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) on a command that reads a config: the one spelling of
    the option whose values :func:`apply_overrides` applies, in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train_setup.lr=0.01 (repeatable, typed)",
    )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (``--set``) to the raw config, in order."""
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override}: expected KEY=VALUE, e.g. train_setup.lr=0.01")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {override}: '{part}' is not a section")
            node = child
        last = parts[-1]
        for spelling in [k for k in node if k != last and _same_key(k, last)]:
            del node[spelling]  # ODEON's "class imbalance": the override replaces its value
        node[last] = parse_override_value(raw_value)
    return data


def _same_key(a: str, b: str) -> bool:
    return a.replace(" ", "_") == b.replace(" ", "_")
