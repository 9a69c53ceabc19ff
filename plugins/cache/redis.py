"""`cache_redis`: the L3 response cache, shared by many processes and hosts.

Off until `[plugins.cache_redis]` exists in plugins.toml. Uses redis-py's asyncio
client (imported on first use, never at plugin load). `rediss://` URLs use TLS;
a password comes from the environment (`password_env`), never from the file.

A cache must never make a call fail or wait: every operation is bounded by
`op_timeout`, and after `failure_threshold` failures in a row the tier steps aside
(a circuit breaker): lookups are misses and stores are skipped without touching
the network. After `reprobe_s` one call probes Redis again; success closes the
breaker, failure doubles the wait (up to `reprobe_max_s`). The first outage logs
one warning; later ones log at most one warning per `warn_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from modelherd import hookimpl
from modelherd.cache import CacheTier
from modelherd.errors import ConfigError, MissingDependencyError
from modelherd.lazy_model import LazyModel
from modelherd.plugins.cache.codec import (
    CorruptEntryError,
    FernetSeal,
    Seal,
    decode,
    encode,
    load_sign_key,
    make_seal,
)
from modelherd.types import ChatResponse
from pydantic import ConfigDict, field_validator

if TYPE_CHECKING:
    import click
    from modelherd.kernel import Herd

log = logging.getLogger("modelherd.cache.redis")
T = TypeVar("T")

#: the default key prefix: disjoint from the quota keys' (`herd:tenants:`)
CACHE_PREFIX = "herd:cache:"
#: the quota plugin's default key prefix (plugins/resources/tenants/settings.py)
QUOTA_PREFIX = "herd:tenants"
#: what an entry's name ends with after the prefix: "<namespace>:<40 hex digits>"
#: (modelherd.cache.request_key); `clear` deletes nothing else, whatever the prefix
_ENTRY_TAIL = re.compile(rb":[0-9a-f]{40}$")


def _user_seal() -> Seal:
    from modelherd.plugins.cache.codec import HmacSeal

    return HmacSeal(load_sign_key())


class RedisSettings(LazyModel):
    """`[plugins.cache_redis]`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: redis://host:port/db or rediss:// for TLS (no password here: use password_env)
    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    #: env var holding the Redis password (AUTH / ACL)
    password_env: str | None = None
    #: keys are "<prefix><tenant namespace>:<hash>"; must not overlap the quota keys'
    #: prefix ([plugins.tenants] key_prefix), which `herd cache clear` never touches
    prefix: str = CACHE_PREFIX
    #: seconds an entry lives unless the call passes cache_ttl=; 0 = no expiry
    ttl: float = 24 * 3600.0
    #: the most one Redis operation may take, seconds
    op_timeout: float = 0.25
    failure_threshold: int = 2
    reprobe_s: float = 5.0
    reprobe_max_s: float = 60.0
    warn_interval_s: float = 300.0
    #: env var holding a Fernet key: values are encrypted before they leave the process
    encrypt_key_env: str | None = None
    #: env var holding the key that signs entries: set the same one on every host that
    #: shares this Redis (default: this user's own key file, so only this host reads them)
    sign_key_env: str | None = None
    #: TLS: CA bundle to trust (rediss:// only); default: the system store
    ssl_ca_certs: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        from urllib.parse import urlsplit

        if urlsplit(value).password:
            # the message must not repeat the URL: it holds the secret
            raise ValueError(
                "holds a password — remove it from the URL and set password_env to the "
                "name of an environment variable that holds it"
            )
        return value

    @field_validator("op_timeout", "reprobe_s", "reprobe_max_s")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


class _Unavailable(Exception):
    """The breaker is open: skip Redis without trying."""


class RedisTier(CacheTier):
    name = "redis"
    order = 30

    def __init__(
        self, settings: RedisSettings, password: str | None = None, seal: Seal | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self._password = password
        self._seal: Seal = seal if seal is not None else _user_seal()
        self._client: Any = None
        self._failures = 0
        self._open_until = 0.0
        self._backoff = settings.reprobe_s
        self._probing = False
        self._last_warning = -1e18
        self.outages = 0
        self._entry_warned = False

    def __repr__(self) -> str:  # never the password
        return f"RedisTier(url={self.settings.url!r}, state={self.state})"

    @property
    def state(self) -> str:
        if self._open_until == 0.0:
            return "closed"
        return "open" if time.monotonic() < self._open_until else "half-open"

    def _get_client(self) -> Any:
        if self._client is None:
            try:
                from redis.asyncio import Redis
                from redis.asyncio.retry import Retry
                from redis.backoff import NoBackoff
            except ImportError:
                raise MissingDependencyError("redis", "redis", "the Redis cache tier") from None
            s = self.settings
            kwargs: dict[str, Any] = {
                "socket_timeout": s.op_timeout,
                "socket_connect_timeout": s.op_timeout,
                # one policy decides (ours): no hidden retries that stretch the timeout
                "retry": Retry(NoBackoff(), 0),
                "retry_on_timeout": False,
                "username": s.username,
                "password": self._password,
            }
            if s.url.startswith("rediss://") and s.ssl_ca_certs:
                kwargs["ssl_ca_certs"] = s.ssl_ca_certs
            self._client = Redis.from_url(s.url, **kwargs)
        return self._client

    # ---- the breaker -------------------------------------------------------------

    async def _call(self, op: Callable[[Any], Awaitable[T]]) -> T:
        probing = False
        if self._open_until:
            if time.monotonic() < self._open_until or self._probing:
                raise _Unavailable
            self._probing = probing = True  # half-open: exactly one call probes
        try:
            client = self._get_client()
            async with asyncio.timeout(self.settings.op_timeout):
                result = await op(client)
        except MissingDependencyError:
            raise
        except Exception as exc:
            self._failed(exc)
            raise _Unavailable from None
        finally:
            if probing:  # also when the probing call is cancelled
                self._probing = False
        if self._open_until:
            log.info("Redis cache %s is reachable again; using it", self.settings.url)
            self._open_until = 0.0
            self._backoff = self.settings.reprobe_s
        self._failures = 0
        return result

    def _failed(self, exc: BaseException) -> None:
        self.count("errors")
        self._failures += 1
        now = time.monotonic()
        if self._open_until:  # a failed probe: wait longer before the next one
            self._backoff = min(self._backoff * 2, self.settings.reprobe_max_s)
            self._open_until = now + self._backoff
            return
        if self._failures < self.settings.failure_threshold:
            return
        self.outages += 1
        self._open_until = now + self._backoff
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if now - self._last_warning >= self.settings.warn_interval_s:
            self._last_warning = now
            log.warning(
                "Redis cache %s is not answering (%s); it steps aside and calls go on "
                "without it — retrying every %gs or more",
                self.settings.url,
                why,
                self.settings.reprobe_s,
            )
        else:
            log.info("Redis cache %s stepped aside again (%s)", self.settings.url, why)

    # ---- the tier ----------------------------------------------------------------

    async def get(self, key: str) -> ChatResponse | None:
        full = self.settings.prefix + key
        try:
            blob = await self._call(lambda c: c.get(full))
        except _Unavailable:
            return None
        return await self._decode(key, full, blob)

    async def get_with_ttl(self, key: str) -> tuple[ChatResponse | None, float | None]:
        """GET and PTTL in one round trip (a pipeline, no transaction)."""
        full = self.settings.prefix + key

        async def both(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.get(full)
            pipe.pttl(full)
            return list(await pipe.execute())

        try:
            blob, pttl = await self._call(both)
        except _Unavailable:
            return None, None
        response = await self._decode(key, full, blob)
        # PTTL: -1 no expiry (None), -2 expired since the GET (0: not worth promoting)
        if not isinstance(pttl, int) or pttl == -1:
            return response, None
        return response, max(pttl, 0) / 1000

    async def _decode(self, key: str, full: str, blob: Any) -> ChatResponse | None:
        if blob is None:
            return None
        try:
            return decode(key, blob, self._seal)
        except CorruptEntryError as exc:
            self.count("errors")
            if not self._entry_warned:
                self._entry_warned = True
                log.warning(
                    "Redis cache: an entry cannot be trusted (%s); treated as a miss and removed",
                    exc,
                )
            with contextlib.suppress(_Unavailable):
                await self._call(lambda c: c.delete(full))
            return None

    async def set(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        if ttl is None:
            ttl = self.settings.ttl
        elif ttl <= 0:
            return
        blob = encode(key, response, self._seal)
        full = self.settings.prefix + key
        px = int(ttl * 1000) if ttl > 0 else None
        try:
            await self._call(lambda c: c.set(full, blob, px=px))
        except _Unavailable:
            return
        self.count("stores")
        self.count("bytes", len(blob))

    async def clear(self) -> int:
        """Delete this prefix's cache entries (SCAN, never KEYS or FLUSHDB: Redis may be
        shared). Only names shaped like an entry go: quota buckets and anything else
        another program keeps under a similar prefix stay."""
        removed = 0
        client = self._get_client()
        batch: list[bytes] = []
        async for name in client.scan_iter(
            match=_glob_escape(self.settings.prefix) + "*", count=500
        ):
            raw = name if isinstance(name, bytes) else str(name).encode()
            if not _ENTRY_TAIL.search(raw):
                continue
            batch.append(name)
            if len(batch) >= 500:
                removed += await client.delete(*batch)
                batch = []
        if batch:
            removed += await client.delete(*batch)
        return int(removed)

    async def count_entries(self) -> int:
        client = self._get_client()
        found = 0
        async with asyncio.timeout(max(self.settings.op_timeout, 5.0)):
            match = _glob_escape(self.settings.prefix) + "*"
            async for name in client.scan_iter(match=match, count=1000):
                raw = name if isinstance(name, bytes) else str(name).encode()
                found += bool(_ENTRY_TAIL.search(raw))
        return found

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters.as_dict(),
            "url": self.settings.url,
            "state": self.state,
            "outages": self.outages,
            "ttl_s": self.settings.ttl,
            "encrypted": isinstance(self._seal, FernetSeal),
        }

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # closing a dead connection may fail; there is nothing left to keep
            with contextlib.suppress(Exception):
                await client.aclose()


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def load_settings(herd: Herd) -> RedisSettings | None:
    """The validated table, or None when [plugins.cache_redis] is absent (tier off)."""
    if "cache_redis" not in herd.config.plugins:
        return None
    settings = herd.plugin_config("cache_redis", RedisSettings, "docs/cache.md")
    tenants = herd.config.plugin_settings("tenants")
    quota = str(tenants.get("key_prefix", QUOTA_PREFIX)) if "redis_url" in tenants else ""
    if quota and (settings.prefix.startswith(quota) or quota.startswith(settings.prefix)):
        # `herd cache clear` would delete the quota buckets (and a tenant's usage)
        raise ConfigError(
            f"{herd.config.source}: [plugins.cache_redis] prefix: '{settings.prefix}' overlaps "
            f"the quota keys' prefix '{quota}' ([plugins.tenants] key_prefix) — use "
            f'disjoint prefixes, e.g. prefix = "{CACHE_PREFIX}"'
        )
    return settings


def build_tier(herd: Herd, settings: RedisSettings) -> RedisTier:
    import importlib.util

    where = f"{herd.config.source}: [plugins.cache_redis]"
    # found, not imported: a missing SDK is a load error with its pip line, at start
    if importlib.util.find_spec("redis") is None:
        raise MissingDependencyError("redis", "redis", f"{where} (the Redis cache tier)")
    password = None
    if settings.password_env:
        password = herd.env.get(settings.password_env)
        if not password:
            raise ConfigError(
                f"{where} password_env: the environment variable {settings.password_env} "
                f"is not set — export it (or put it in .env) with the Redis password"
            )
    return RedisTier(settings, password, make_seal(settings, herd.env, where))


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("cache_redis", RedisSettings, "docs/cache.md")


@hookimpl
def register_cache_tiers(register: Callable[..., None], herd: Herd) -> None:
    settings = load_settings(herd)
    if settings is not None and settings.enabled:
        register(build_tier(herd, settings))


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.cache.cli import add_cache_commands

    add_cache_commands(cli)
