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

from typing import TYPE_CHECKING, Any, Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")

__all__ = ["Stash", "StashKey"]


class StashKey(Generic[T]):
    """A key for `Stash`; create one per thing you store, at module level."""

    __slots__ = ()


class Stash(dict[StashKey[Any], Any]):
    """A mapping from `StashKey[T]` to `T`. Not thread-safe (nor is the pipeline).

    At run time it is a plain dict, so every read and write is dict's own C code: the
    pipeline and the default plugins use a request's stash on every call, and a Python
    method per access cost ~0.2 µs each (bench/overhead.py). The typed signatures below
    exist for the type checker only.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        def __setitem__(self, key: StashKey[T], value: T) -> None: ...

        def __getitem__(self, key: StashKey[T]) -> T: ...

        def get(self, key: StashKey[T], default: D) -> T | D:  # type: ignore[override]
            ...

        def setdefault(self, key: StashKey[T], default: T) -> T:  # type: ignore[override]
            ...

        def pop(self, key: StashKey[T], default: D) -> T | D:  # type: ignore[override]
            ...

    def __repr__(self) -> str:
        return f"<Stash with {len(self)} item(s)>"
