"""Named registries: a config names parts, a registry says which exist."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def closest(name: str, choices: list[str], cutoff: float = 0.6) -> str | None:
    """The closest valid name to a misspelt one, if any is close enough (case aside).

    Close is difflib's similarity ratio, at least ``cutoff``. Among equally close names wins
    the one sharing the longest prefix with ``name``, then the one whose trailing number is
    nearest: ``resnet35`` -> ``resnet34``, not ``resnet50`` (difflib alone would take the
    alphabetically last of a tie).
    """
    wanted = name.lower()
    number = _trailing_number(wanted)
    best: tuple[float, int, float, str] | None = None
    found: str | None = None
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(wanted)
    for choice in choices:
        candidate = choice.lower()
        matcher.set_seq1(candidate)
        if matcher.real_quick_ratio() < cutoff or matcher.quick_ratio() < cutoff:
            continue
        ratio = matcher.ratio()
        if ratio < cutoff:
            continue
        other = _trailing_number(candidate)
        distance = abs(number - other) if number is not None and other is not None else math.inf
        key = (-ratio, -_common_prefix(wanted, candidate), distance, candidate)
        if best is None or key < best:
            best, found = key, choice
    return found


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _trailing_number(text: str) -> int | None:
    digits = len(text) - len(text.rstrip("0123456789"))
    return int(text[-digits:]) if digits else None


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


def check_implements(names: Iterable[str], implementations: Registry[Any]) -> None:
    """Refuse ``implementations`` unless it has exactly the entries ``names``.

    A choice's names (and meanings) are listed once, low enough for the config and the parser
    to read them (:mod:`landseg.config.choices`); the code carrying each out registers under
    the same names in a registry of its own layer, which calls this when it is imported, so a
    name listed but not implemented (or implemented but not listed) fails at once.
    """
    listed = set(names)
    missing = sorted(listed - set(implementations))
    extra = sorted(set(implementations) - listed)
    if missing or extra:
        raise RuntimeError(
            f"{implementations.kind} implementations do not match the names listed in "
            f"landseg.config.choices: missing {missing or 'none'}, not listed {extra or 'none'}"
        )
