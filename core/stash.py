"""Typed per-Herd and per-request state for plugins (pytest's `Stash` is the model).

A plugin that must remember something about a Herd (its runtime object) or about one
call (a span, a start time) declares a module-level key and reads it back with its
type intact:

    _T0 = StashKey[float]()

    @hookimpl
    def before_call(request, herd):
        request.stash[_T0] = time.perf_counter()

Keys are objects, not strings, so two plugins can never collide and a typo is a
NameError instead of a silent `None`.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
D = TypeVar("D")

__all__ = ["Stash", "StashKey"]


class StashKey(Generic[T]):
    """A key for `Stash`; create one per thing you store, at module level."""

    __slots__ = ()


class Stash:
    """A mapping from `StashKey[T]` to `T`. Not thread-safe (nor is the pipeline)."""

    __slots__ = ("_storage",)

    def __init__(self) -> None:
        self._storage: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._storage[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._storage[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        return cast("T | D", self._storage.get(key, default))

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._storage.setdefault(key, default))

    def pop(self, key: StashKey[T], default: D) -> T | D:
        return cast("T | D", self._storage.pop(key, default))

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._storage[key]

    def __contains__(self, key: object) -> bool:
        return key in self._storage

    def __len__(self) -> int:
        return len(self._storage)

    def __repr__(self) -> str:
        return f"<Stash with {len(self._storage)} item(s)>"
