"""The response cache: the tier interface, request keys, and the tiered lookup.

Tiers are plugins (memory, disk, Redis …) registered through `register_cache_tiers`.
The kernel asks them fastest first; a hit in a slower tier fills the faster ones.
Keys hash the canonical request (everything that changes the output) and the
tenant, so tenants never read each other's entries. API keys are never part of a
request, so they can never reach a key.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar

from .types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from .kernel import Herd

KEY_VERSION = "v1"

#: options that never change the answer and so stay out of the key
_NON_OUTPUT_OPTIONS = frozenset({"keep_alive", "num_thread", "n_gpu_layers", "num_gpu", "use_mmap"})


class CacheTier:
    """One cache tier. Implementations must never raise from get/set: on trouble,
    return None (a miss) or skip the store, and report through `herd.emit`."""

    name: ClassVar[str] = ""
    #: lower is faster; tiers are asked in ascending order
    order: ClassVar[int] = 100

    async def get(self, key: str) -> ChatResponse | None:
        raise NotImplementedError

    async def set(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        raise NotImplementedError

    async def clear(self) -> int:
        """Remove every entry; return how many were removed (or -1 if unknown)."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        return None


def is_deterministic(request: ChatRequest) -> bool:
    """Sampling with temperature > 0 and no seed gives a new answer each time."""
    opts = request.options
    temperature = opts.get("temperature")
    return temperature is None or temperature == 0 or opts.get("seed") is not None


def request_key(request: ChatRequest) -> str:
    """A stable hash of everything that changes the answer, namespaced by tenant."""
    options = {k: v for k, v in request.options.items() if k not in _NON_OUTPUT_OPTIONS}
    canonical = json.dumps(
        [
            KEY_VERSION,
            request.provider,
            request.model,
            [(m.role, m.content) for m in request.messages],
            options,
        ],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    digest = hashlib.blake2b(canonical.encode(), digest_size=20).hexdigest()
    return f"{request.tenant or 'default'}:{digest}"


class TieredCache:
    """Asks tiers in order, promotes hits into faster tiers, stores into all."""

    def __init__(self, tiers: list[CacheTier], herd: Herd) -> None:
        self.tiers = sorted(tiers, key=lambda t: t.order)
        self.herd = herd

    async def lookup(self, key: str) -> ChatResponse | None:
        for index, tier in enumerate(self.tiers):
            hit = await tier.get(key)
            if hit is not None:
                for faster in self.tiers[:index]:
                    await faster.set(key, hit, None)
                return hit.model_copy(update={"cache_tier": tier.name})
        return None

    async def store(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        for tier in self.tiers:
            await tier.set(key, response, ttl)

    async def aclose(self) -> None:
        for tier in self.tiers:
            await tier.aclose()
