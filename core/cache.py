"""The response cache: the tier interface, request keys, and the tiered lookup.

Tiers are plugins (memory, disk, Redis …) registered through `register_cache_tiers`.
The kernel asks them fastest first; a hit in a slower tier fills the faster ones.
Keys hash the canonical request (everything that changes the output) and the
tenant, so tenants never read each other's entries. API keys are never part of a
request, so they can never reach a key.

Cache-wide policy lives in `[plugins.cache]` (see docs/cache.md):
`cache_sampled` (also cache temperature > 0 answers without a seed) and
`store_truncated` (also store answers cut off by the token limit).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from pydantic import ConfigDict

from .lazy_model import LazyModel
from .types import ChatRequest, ChatResponse, Message, Metric, TextPart, Usage, trusted

if TYPE_CHECKING:
    from .kernel import Herd

log = logging.getLogger("modelherd.cache")

#: bump when the key layout changes: old entries then simply stop matching
KEY_VERSION = "v3"

#: options that never change the answer and so stay out of the key
_NON_OUTPUT_OPTIONS = frozenset(
    {
        "keep_alive",
        "num_thread",
        "n_gpu_layers",
        "num_gpu",
        "use_mmap",
        "use_mlock",
        "n_threads",
        "n_batch",
        "flash_attn",
        "tensor_split",
    }
)
#: values whose repr() is exact and cheap; anything else goes through canonical JSON
_SCALARS = (str, int, float, bool, type(None))


def _json_default(value: Any) -> Any:
    """Canonical form of the odd values people pass as options (schemas above all)."""
    schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(schema):
        # a pydantic class as response_format: its schema, not its (ambiguous) name
        return {"$pydantic": value.__qualname__, "schema": schema()}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(repr(v) for v in value)
    if isinstance(value, bytes):
        return value.hex()
    # last resort: type-qualified repr. An object whose repr hides its content would
    # collide, so we refuse to guess and make the key unique instead (a miss, never
    # a wrong answer).
    return f"<{type(value).__module__}.{type(value).__qualname__} at {id(value):x}>"


def _canonical(value: Any) -> str:
    if isinstance(value, _SCALARS):
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def is_deterministic(request: ChatRequest) -> bool:
    """Sampling with temperature > 0 and no seed gives a new answer each time."""
    opts = request.options
    temperature = opts.get("temperature")
    return temperature is None or temperature == 0 or opts.get("seed") is not None


def request_key(request: ChatRequest) -> str:
    """A stable hash of everything that changes the answer, namespaced by tenant.

    Hot path (every cached call): repr() of scalars is exact and ~3x cheaper than
    canonical JSON, so only nested options (tools, response_format, stop lists …)
    pay for json.dumps. A plain message keys by role and content; one with parts, tool
    calls or a tool answer by all of its fields (a test pins Message's fields, so a new
    field cannot silently fall out of the key). Tools, tool_choice and response_format
    are options, so they are in the key too.
    """
    opts = request.options
    items: list[tuple[str, str]] | tuple[()] = ()
    if opts:
        items = sorted((k, _canonical(v)) for k, v in opts.items() if k not in _NON_OUTPUT_OPTIONS)
    messages = request.messages
    payload = repr(
        (
            KEY_VERSION,
            request.provider,
            request.model,
            [(m.role, m.content) if m.is_plain else _message_key(m) for m in messages],
            items,
        )
    )
    digest = hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()
    return f"{tenant_namespace(request.tenant)}:{digest}"


#: the namespace of calls made without a tenant: no tenant name can produce it, since
#: named tenants always start with "t=" (so None, "" and "default" are three namespaces)
NO_TENANT = "-"


@lru_cache(maxsize=1024)  # bounded: invented names cannot grow it
def tenant_namespace(tenant: str | None) -> str:
    """The readable key prefix of one tenant's entries (a tier can clear one tenant).

    The name is percent-encoded, so no name can reach into another's namespace
    (`"a:b"`, `"*"`) or into the reserved one.
    """
    if tenant is None:
        return NO_TENANT
    # surrogatepass: a lone surrogate ("caf\udce9") is a distinct name, not a crash
    return "t=" + quote(tenant.encode("utf-8", "surrogatepass"), safe="")


def _message_key(message: Message) -> str:
    """The canonical form of a message with parts, tool calls or a tool answer. An image
    counts by a digest of its bytes (a file given by path is read: a changed file is a
    new request), not by its size in the key."""
    parts: Any = message.content
    if not isinstance(parts, str):
        parts = [
            p.model_dump(mode="json")
            if isinstance(p, TextPart)
            else {
                "image": p.url or hashlib.blake2b(p.load()[1], digest_size=20).hexdigest(),
                "media_type": p.media_type,
            }
            for p in parts
        ]
    return _canonical(
        [
            message.role,
            parts,
            [(c.id, c.name, c.arguments) for c in message.tool_calls],
            message.tool_call_id,
            message.name,
        ]
    )


def coalesce_key(request: ChatRequest) -> str | None:
    """The key identical in-flight calls share, or None when they must not share."""
    return request_key(request) if is_deterministic(request) else None


class CachePolicy(LazyModel):
    """`[plugins.cache]`: what the response cache may keep, whichever tiers are on."""

    model_config = ConfigDict(extra="forbid")

    #: also cache (and coalesce) temperature > 0 answers that have no seed
    cache_sampled: bool = False
    #: also store answers cut off by the token limit (finish_reason "length")
    store_truncated: bool = False


def load_policy(herd: Herd) -> CachePolicy:
    return herd.plugin_config("cache", CachePolicy, "docs/cache.md")


@dataclass(slots=True)
class TierCounters:
    """What a tier did since start; `herd cache stats` shows these."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0
    errors: int = 0
    #: bytes written by stores (serialised size; an estimate for the memory tier)
    bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_EVENT_METRIC = {
    "hits": "herd.cache.hits",
    "misses": "herd.cache.misses",
    "stores": "herd.cache.stores",
    "evictions": "herd.cache.evictions",
    "errors": "herd.cache.errors",
    "bytes": "herd.cache.bytes",
}


class CacheTier:
    """One cache tier. Implementations must never raise from get/set: on trouble,
    return None (a miss) or skip the store, and `count("errors")`.

    Subclasses call `super().__init__()`; `count()` keeps the per-tier counters and
    emits them as metrics (`herd.cache.<event>`, attribute `herd.cache.tier`).
    """

    name: ClassVar[str] = ""
    #: lower is faster; tiers are asked in ascending order
    order: ClassVar[int] = 100

    def __init__(self) -> None:
        self.counters = TierCounters()
        self.herd: Herd | None = None
        self._metric_attrs = {"herd.cache.tier": self.name}

    def count(self, event: str, value: int = 1) -> None:
        """Add to a counter (hits, misses, stores, evictions, errors, bytes) and emit it."""
        counters = self.counters
        setattr(counters, event, getattr(counters, event) + value)
        herd = self.herd
        if herd is not None and herd.wants_metrics:
            unit = "By" if event == "bytes" else "1"
            herd.emit(Metric(_EVENT_METRIC[event], value, unit, "counter", self._metric_attrs))

    async def get(self, key: str) -> ChatResponse | None:
        raise NotImplementedError

    async def get_with_ttl(self, key: str) -> tuple[ChatResponse | None, float | None]:
        """The entry and the seconds it has left (None: unknown or no expiry).

        Used when a hit here is copied into faster tiers, so the copy never outlives
        the original (a per-call `cache_ttl=` holds in every tier). Override it when
        the tier knows expiries; the default says "unknown".
        """
        return await self.get(key), None

    async def set(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        """Store; `ttl` None means the tier's own default, <= 0 means do not keep it."""
        raise NotImplementedError

    async def clear(self) -> int:
        """Remove every entry; return how many were removed (or -1 if unknown)."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Counters plus what the tier knows about its contents (entries, bytes …)."""
        return self.counters.as_dict()

    async def aclose(self) -> None:
        return None


class TieredCache:
    """Asks tiers in order, promotes hits into faster tiers, stores into all."""

    def __init__(self, tiers: list[CacheTier], herd: Herd) -> None:
        self.tiers = sorted(tiers, key=lambda t: t.order)
        self.herd = herd
        self.policy = load_policy(herd)
        self._warned: set[str] = set()
        for tier in self.tiers:
            # a third-party tier that skipped CacheTier.__init__ still gets counters
            if not hasattr(tier, "counters"):
                CacheTier.__init__(tier)
            if getattr(tier, "herd", None) is None:
                tier.herd = herd

    # ---- what is cached --------------------------------------------------------

    def key_for(self, request: ChatRequest) -> str | None:
        """The request's key, or None when the policy says it must not be cached."""
        if self.policy.cache_sampled or is_deterministic(request):
            return request_key(request)
        return None

    def storable(self, response: ChatResponse) -> bool:
        """Never empty, unfinished or failed answers, nor tool calls with invalid arguments;
        truncated ones only when `store_truncated` is on. An answer made only of valid
        tool calls is stored."""
        if response.finish_reason in ("unknown", "error"):
            return False
        if response.tool_calls:
            if not all(call.ok for call in response.tool_calls):
                return False
        elif not response.content:
            return False
        return response.finish_reason != "length" or self.policy.store_truncated

    # ---- lookup / store ----------------------------------------------------------

    def _failed(self, tier: CacheTier, op: str, exc: BaseException) -> None:
        tier.count("errors")
        if tier.name not in self._warned:
            self._warned.add(tier.name)
            log.warning(
                "cache tier '%s' raised %s in %s (%s); treating it as a miss — "
                "this is a bug in that tier's plugin",
                tier.name,
                type(exc).__name__,
                op,
                exc,
            )

    async def lookup(self, key: str) -> ChatResponse | None:
        remaining: float | None = None
        for index, tier in enumerate(self.tiers):
            try:
                if index == 0:  # the fastest tier never promotes: skip the TTL read
                    hit = await tier.get(key)
                else:
                    hit, remaining = await tier.get_with_ttl(key)
            except Exception as exc:
                self._failed(tier, "get", exc)
                hit = None
            if hit is None:
                tier.count("misses")
                continue
            tier.count("hits")
            promote = self.tiers[:index] if remaining is None or remaining > 0 else ()
            for faster in promote:
                try:
                    await faster.set(key, hit, remaining)
                except Exception as exc:
                    self._failed(faster, "set", exc)
            # a fresh object per hit: the caller may mutate it (usage too) freely
            return trusted(
                ChatResponse,
                {
                    **hit.__dict__,
                    "cache_tier": tier.name,
                    "usage": trusted(Usage, dict(hit.usage.__dict__)),
                    "provider_metrics": dict(hit.provider_metrics),
                },
            )
        return None

    async def store(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        for tier in self.tiers:
            try:
                await tier.set(key, response, ttl)
            except Exception as exc:
                self._failed(tier, "set", exc)

    async def clear(self, tier_name: str | None = None) -> dict[str, int]:
        """Clear every tier, or the one named; {tier: entries removed (-1 unknown)}."""
        out: dict[str, int] = {}
        for tier in self.tiers:
            if tier_name is None or tier.name == tier_name:
                out[tier.name] = await tier.clear()
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        return {tier.name: tier.stats() for tier in self.tiers}

    async def aclose(self) -> None:
        for tier in self.tiers:
            try:
                await tier.aclose()
            except Exception as exc:
                self._failed(tier, "aclose", exc)
