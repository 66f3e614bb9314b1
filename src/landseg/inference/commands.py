"""Subcommands of this package, registered into ``landseg``'s parser (see landseg.cli)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def register(add: Callable[..., Any]) -> None:
    """Add this package's subcommands with ``add(name, handler, help_text)``."""
