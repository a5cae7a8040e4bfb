"""Explicit name -> object registries (no class lookup by searching the file system)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def _load_extensions() -> bool:
    """Import extensions not imported yet (:mod:`nnseg.extensions`); True when that added modules."""
    from nnseg.extensions import load_extensions

    return bool(load_extensions())


class Registry(Generic[T]):
    """A mapping from names to objects, filled with the :meth:`register` decorator.

    A name that is missing makes the registry import the user's extensions (:mod:`nnseg.extensions`) once and look
    again, so components registered by an extension are found in every process (spawned workers, DDP ranks).

    Example:
        >>> NORMS = Registry[int]("norm")
        >>> NORMS.add("a", 1)
        >>> NORMS["a"]
        1
        >>> NORMS["b"]
        Traceback (most recent call last):
        ...
        KeyError: "unknown norm 'b'; registered: ['a']"
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        for key in (name, *aliases):
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorator

    def _has(self, name: object) -> bool:
        return name in self._items or (isinstance(name, str) and _load_extensions() and name in self._items)

    def __getitem__(self, name: str) -> T:
        if not self._has(name):
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}")
        return self._items[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._items[name] if self._has(name) else default

    def __contains__(self, name: object) -> bool:
        return self._has(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def names(self) -> list[str]:
        _load_extensions()
        return sorted(self._items)
