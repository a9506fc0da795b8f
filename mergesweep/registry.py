"""Named registries for plug-ins: merge methods, spaces, searchers, objectives, executors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mergesweep.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to plug-in factories that refuses duplicates.

    Example:
        >>> reg: Registry[type] = Registry("space", key="space.kind")
        >>> @reg.register("modelwise")
        ... class ModelWise: ...
        >>> reg.get("modelwise").__name__
        'ModelWise'
    """

    def __init__(self, kind: str, *, key: str) -> None:
        self.kind = kind
        self.key = key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a second registration of a name fails."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, *, key: str | None = None) -> T:
        """Return the plug-in registered as ``name`` or raise naming the valid choices."""
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items))
            raise UnknownNameError(
                f"{key or self.key}: unknown {self.kind} '{name}'; choose one of {choices} "
                f"(a new one is registered with @{self.kind.upper()}S.register(name))"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
