"""A named registry for configs or builders: registering a name twice and asking for an unknown name both raise
``ValueError`` (torchvision / timm conventions)."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object mapping with loud errors.

    Example:
        >>> reg = Registry[int]("config")
        >>> reg.register("a", 1)
        1
        >>> reg.get("a"), reg.names()
        (1, ['a'])
    """

    def __init__(self, kind: str = "entry") -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Add ``obj`` under ``name`` and return it; a duplicate name raises ``ValueError``."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def values(self) -> list[T]:
        """Registered objects in name order."""
        return [self._items[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items
