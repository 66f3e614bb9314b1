"""Named registries: a config names parts, a registry says which exist (seed 003)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The closest valid name to a misspelt one, if any is close enough."""
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    hint = closest(name, choices)
    suggestion = f" (did you mean '{hint}'?)" if hint else ""
    return f"unknown {kind} '{name}'{suggestion}; valid: {', '.join(sorted(choices))}"


@dataclass
class Entry(Generic[T]):
    name: str
    factory: T
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A case-insensitive name -> factory table with per-entry metadata.

    Metadata (``info``) lets compatibility checks run before any training, e.g. whether
    a loss accepts class weights or which input size a model needs.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, *, aliases: tuple[str, ...] = (), **info: Any
    ) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            self.add(name, factory, aliases=aliases, **info)
            return factory

        return decorator

    def add(self, name: str, factory: T, *, aliases: tuple[str, ...] = (), **info: Any) -> None:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[key] = Entry(key, factory, dict(info))
        for alias in aliases:
            self._aliases[alias.lower()] = key

    def names(self) -> list[str]:
        return sorted(self._entries)

    def canonical(self, name: str) -> str:
        key = name.lower()
        return self._aliases.get(key, key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def entry(self, name: str) -> Entry[T]:
        key = self.canonical(name)
        if key not in self._entries:
            raise KeyError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[key]

    def get(self, name: str) -> T:
        return self.entry(name).factory

    def info(self, name: str) -> dict[str, Any]:
        return self.entry(name).info

    def is_alias(self, name: str) -> bool:
        return name.lower() in self._aliases
