"""Who is calling: the API key decides the tenant (never the request body).

Each failure is a typed `Refusal` carrying the HTTP status; the route turns it into
the vendor's error shape. Lookups are cached for `key_cache_s` so a call costs one
dict lookup and one SHA-256, not a file read or a Redis round trip.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass

from modelherd.plugins.serve.keys import KeyRecord, KeyStore, RedisKeyStore, token_hash, token_id

log = logging.getLogger("modelherd.serve")

#: compared against when the key id is unknown, so a miss costs what a hit costs
_DUMMY_HASH = "0" * 64


class Refusal(Exception):
    """A request the gateway refuses before any model is called."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as its key says."""

    key_id: str
    tenant: str
    models: frozenset[str] | None
    admin: bool

    def may_use(self, alias: str) -> bool:
        return self.models is None or alias in self.models


def bearer(authorization: str | None, x_api_key: str | None) -> str | None:
    """The token from `Authorization: Bearer …` (OpenAI, Ollama) or `x-api-key` (Anthropic)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key:
        return x_api_key.strip()
    return None


class Authenticator:
    def __init__(self, store: KeyStore, cache_s: float) -> None:
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        self._lock = asyncio.Lock()

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[1] < self.cache_s:
            return cached[0]
        try:
            if isinstance(self.store, RedisKeyStore):
                record = await self.store.aget(key_id)
            else:
                record = self.store.get(key_id)
        except Exception as exc:
            # fail closed, but say it is ours and passing: no key is trusted unread
            log.warning("serve: the key store failed: %s", type(exc).__name__)
            raise Refusal(
                503,
                "keys_unavailable",
                f"the gateway cannot read its key store right now ({type(exc).__name__}) — retry",
                1.0,
            ) from None
        if len(self._cache) > 10_000:  # bounded: random ids must not grow it forever
            self._cache.clear()
        self._cache[key_id] = (record, now)
        return record

    async def authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise Refusal(
                401,
                "missing_api_key",
                "no API key — send 'Authorization: Bearer <key>' (a key from `herd keys create`)",
            )
        key_id = token_id(token)
        record = await self._record(key_id) if key_id is not None else None
        presented = token_hash(token)
        expected = record.sha256 if record is not None else _DUMMY_HASH
        if not hmac.compare_digest(presented, expected) or record is None:
            raise Refusal(
                401,
                "invalid_api_key",
                "invalid API key — check it, or create one with `herd keys create`",
            )
        state = record.state()
        if state != "active":
            raise Refusal(
                401,
                f"{state}_api_key",
                f"this API key is {state} — ask the gateway's admin for a new one",
            )
        models = frozenset(record.models) if record.models is not None else None
        return Principal(record.id, record.tenant, models, record.admin)
