"""One small registry for every "pick one by name" choice in formerlab.

RoPE schedules, relative-position maps, attention normalisers, token mixers, logits processors
and lab experiments are all :class:`Registry` instances. An unknown name raises ``ValueError``
listing the valid names, so a typo never falls through an if-chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A named collection of objects (functions, classes) with optional aliases and metadata.

    Example:
        >>> ACTIVATIONS = Registry("activation")
        >>> @ACTIVATIONS.register("double", aliases=("twice",))
        ... def double(x):
        ...     return 2 * x
        >>> ACTIVATIONS.get("twice")(3)
        6
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str, *, aliases: tuple[str, ...] = (), **meta: Any
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``); extra kwargs are metadata."""

        def deco(obj: T) -> T:
            self.add(name, obj, aliases=aliases, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), **meta: Any) -> None:
        """Register ``obj`` directly (non-decorator form)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._items[name] = obj
        self._meta[name] = dict(meta)
        for alias in aliases:
            self._aliases[alias] = name

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a canonical name) and its aliases."""
        name = self.canonical(name)
        del self._items[name], self._meta[name]
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def canonical(self, name: str) -> str:
        """Resolve an alias to its canonical name; raise ``ValueError`` for unknown names."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        valid = ", ".join(self.names(include_aliases=True))
        raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind} names: {valid}")

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def meta(self, name: str) -> dict[str, Any]:
        return dict(self._meta[self.canonical(name)])

    def names(self, *, include_aliases: bool = False) -> list[str]:
        names = list(self._items)
        if include_aliases:
            names += [f"{a} (= {c})" for a, c in self._aliases.items()]
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
