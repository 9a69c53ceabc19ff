"""`cache_memory`: the L1 response cache, in this process's memory (cachetools).

On by default (TTL 1 hour, 10 000 entries, 64 MB); `[plugins.cache_memory]
enabled = false` turns it off. Entries expire by their TTL (the tier's, or the
call's `cache_ttl=`) and are evicted least-recently-used first when either bound,
entries or bytes, is reached. Responses are kept as objects (no serialisation), so
a hit costs a dict lookup; the tiered cache hands each caller its own copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.cache import CacheTier
from modelherd.lazy_model import LazyModel
from modelherd.plugins.cache.codec import parse_size
from modelherd.types import ChatResponse, Usage, trusted
from pydantic import ConfigDict, field_validator

if TYPE_CHECKING:
    import click
    from modelherd.kernel import Herd

#: bookkeeping per entry beyond its text (object headers, usage, key): an estimate
_OVERHEAD_BYTES = 600


class MemorySettings(LazyModel):
    """`[plugins.cache_memory]`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: seconds an entry lives unless the call passes cache_ttl=
    ttl: float = 3600.0
    max_entries: int = 10_000
    max_bytes: int = 64 * 1000**2

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("ttl", "max_entries", "max_bytes")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


def entry_size(response: ChatResponse) -> int:
    """Approximate bytes an entry holds (str length is a cheap stand-in for its size)."""
    return len(response.content) + len(response.reasoning or "") + _OVERHEAD_BYTES


class MemoryTier(CacheTier):
    name = "memory"
    order = 10

    def __init__(self, settings: MemorySettings) -> None:
        super().__init__()
        from cachetools import LRUCache

        self.settings = settings
        tier = self

        class _Store(LRUCache):
            """LRU bounded by bytes (maxsize + getsizeof); counts capacity evictions."""

            def popitem(self) -> Any:
                item = super().popitem()
                tier.count("evictions")
                return item

        # value = (response, expires_at (monotonic seconds), size). Expiry is checked
        # when an entry is read, not kept in a heap: cachetools' TLRUCache keeps one and
        # its Python-level heap push made every store cost ~12 µs; this one costs ~2 µs.
        # An expired entry that is never read again just ages out of the LRU.
        self._store = _Store(maxsize=settings.max_bytes, getsizeof=lambda value: value[2])

    async def get(self, key: str) -> ChatResponse | None:
        value = self._store.get(key)
        if value is None:
            return None
        if value[1] <= time.monotonic():
            self._store.pop(key, None)
            return None
        return value[0]

    async def get_with_ttl(self, key: str) -> tuple[ChatResponse | None, float | None]:
        value = self._store.get(key)
        if value is None:
            return None, None
        left = value[1] - time.monotonic()
        if left <= 0:
            self._store.pop(key, None)
            return None, None
        return value[0], left

    async def set(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        ttl = self.settings.ttl if ttl is None else ttl
        if ttl <= 0:
            return
        size = entry_size(response)
        if size > self.settings.max_bytes:
            return  # larger than the whole tier: not worth evicting everything for
        # our own copy (usage and metrics are the only mutable parts): the caller keeps
        # and may mutate the object it got
        stored = trusted(
            ChatResponse,
            {
                **response.__dict__,
                "cache_tier": None,
                "usage": trusted(Usage, dict(response.usage.__dict__)),
                "provider_metrics": dict(response.provider_metrics),
            },
        )
        store = self._store
        store[key] = (stored, time.monotonic() + ttl, size)
        while len(store) > self.settings.max_entries:
            store.popitem()
        self.count("stores")
        self.count("bytes", size)

    async def clear(self) -> int:
        removed = len(self._store)
        self._store.clear()
        return removed

    def expire(self) -> int:
        """Drop every expired entry now (stats does it so its counts are true)."""
        now = time.monotonic()
        expired = [key for key, value in self._store.items() if value[1] <= now]
        for key in expired:
            self._store.pop(key, None)
        return len(expired)

    def stats(self) -> dict[str, Any]:
        store = self._store
        self.expire()
        return {
            **self.counters.as_dict(),
            "entries": len(store),
            "size_bytes": int(store.currsize),
            "max_entries": self.settings.max_entries,
            "max_bytes": self.settings.max_bytes,
            "ttl_s": self.settings.ttl,
        }


def load_settings(herd: Herd) -> MemorySettings:
    return herd.plugin_config("cache_memory", MemorySettings, "docs/cache.md")


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("cache_memory", MemorySettings, "docs/cache.md")


@hookimpl
def register_cache_tiers(register: Callable[..., None], herd: Herd) -> None:
    settings = load_settings(herd)
    if settings.enabled:
        register(MemoryTier(settings))


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.cache.cli import add_cache_commands

    add_cache_commands(cli)
