"""`tenants`: per-tenant quotas — `herd.chat(..., tenant="alice")`.

plugins.toml:

    [tenants.alice]
    tier = "premium"
    requests_per_minute = 1200      # any tier field may be overridden per tenant

    [tiers.basic]                   # override a built-in tier (or define a new one)
    daily_tokens = 100000

    [plugins.tenants]
    redis_url = "redis://127.0.0.1:6379/0"   # share limits across processes

Built-in tiers follow the runbook's isolation table (basic / standard / premium /
dedicated: 4 / 8 / 16 GB / exclusive memory, standard / guaranteed / premium /
highest priority), see `DEFAULT_TIERS`. A call over a limit raises
`QuotaExceededError` naming the limit and when it resets; other tenants are not
affected. Rate limits reject at once (with `retry_after`); `max_concurrency` makes
the call wait for a slot up to `max_wait_s`.

With no `[tenants.*]` table this plugin registers no per-call hook at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.errors import ConfigError, QuotaExceededError
from modelherd.plugins.resources.tenants import RUNTIME
from modelherd.plugins.resources.tenants.token_bucket import (
    DailyCounter,
    SlotPool,
    TokenBucket,
    seconds_to_utc_midnight,
)
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse, Metric
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.tenants.redis_limits import RedisLimits

#: tokens the call used, handed from after_call to the admission gate's exit
_TOKENS_USED = StashKey[int]()


log = logging.getLogger("modelherd.tenants")

LOCAL_PROVIDERS = ("llamacpp", "ollama")


class TierLimits(BaseModel):
    """One tier's limits (0 or absent = no limit). Every field may be set per tenant too."""

    model_config = ConfigDict(extra="forbid")

    max_concurrency: int | None = Field(None, ge=0)
    requests_per_minute: float | None = Field(None, ge=0)
    tokens_per_minute: float | None = Field(None, ge=0)
    daily_tokens: int | None = Field(None, ge=0)
    #: added to each call's priority (the scheduler serves higher first)
    priority: int = 0
    #: aliases this tenant may call; ["*"] = all
    allowed_models: list[str] = Field(default_factory=lambda: ["*"])
    #: share of local model memory a model this tenant loads may take (0-1]
    memory_share: float = Field(1.0, gt=0, le=1)
    #: seconds of refill a rate bucket holds (the burst allowed after a quiet spell)
    burst_s: float = Field(2.0, gt=0)
    #: how long a call may wait for a concurrency slot before it is refused
    max_wait_s: float = Field(10.0, ge=0)

    @field_validator("max_concurrency", "requests_per_minute", "tokens_per_minute", "daily_tokens")
    @classmethod
    def _zero_is_unlimited(cls, value: float | None) -> float | None:
        # TOML has no null: 0 switches a tier's default limit off
        return None if value == 0 else value


#: after ../shared/runbook-zh.md "多租户资源隔离": 基础/中等/高级/完全隔离
DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    # dev/test: CPU 50 %, 4 GB, standard service
    "basic": {
        "max_concurrency": 4,
        "requests_per_minute": 60,
        "tokens_per_minute": 40_000,
        "daily_tokens": 500_000,
        "priority": 0,
        "memory_share": 0.25,
    },
    # small production: CPU 75 %, 8 GB, guaranteed service
    "standard": {
        "max_concurrency": 16,
        "requests_per_minute": 600,
        "tokens_per_minute": 200_000,
        "daily_tokens": 5_000_000,
        "priority": 10,
        "memory_share": 0.5,
    },
    # business critical: CPU 100 %, 16 GB, premium service
    "premium": {
        "max_concurrency": 64,
        "requests_per_minute": 3_000,
        "tokens_per_minute": 1_000_000,
        "daily_tokens": 50_000_000,
        "priority": 20,
        "memory_share": 1.0,
    },
    # sensitive work: exclusive resources, highest priority, no quota
    "dedicated": {"priority": 30, "memory_share": 1.0},
}


class TenantsSettings(BaseModel):
    """`[plugins.tenants]`."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = None
    key_prefix: str = "herd:tenants"
    #: a call naming a tenant that is not configured: "reject", or a tier to apply
    unknown_tenant: str = "reject"
    #: seconds before trying Redis again after it failed
    redis_retry_s: float = Field(30.0, gt=0)
    #: local model memory the shares refer to; default: total RAM
    local_memory_gb: float | None = Field(None, gt=0)


class Tenant:
    """A configured tenant and its in-process enforcement state."""

    def __init__(self, name: str, tier: str, limits: TierLimits) -> None:
        self.name = name
        self.tier = tier
        self.limits = limits
        self.allowed = None if "*" in limits.allowed_models else frozenset(limits.allowed_models)
        self.rpm = _bucket(limits.requests_per_minute, limits.burst_s)
        self.tpm = _bucket(limits.tokens_per_minute, limits.burst_s)
        self.daily = DailyCounter()
        self.slots = SlotPool(limits.max_concurrency) if limits.max_concurrency else None


def _bucket(per_minute: float | None, burst_s: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    rate = per_minute / 60.0
    return TokenBucket(rate, max(1.0, rate * burst_s))


def _first_error(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


def build_tiers(config_tiers: dict[str, Any], source: str) -> dict[str, TierLimits]:
    tiers: dict[str, TierLimits] = {}
    names = list(DEFAULT_TIERS) + [n for n in config_tiers if n not in DEFAULT_TIERS]
    for name in names:
        table = config_tiers.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [tiers.{name}] must be a table")
        try:
            tiers[name] = TierLimits.model_validate({**DEFAULT_TIERS.get(name, {}), **table})
        except ValidationError as exc:
            key, msg = _first_error(exc)
            raise ConfigError(
                f"{source}: [tiers.{name}] {key}: {msg} — see docs/resources.md for the tier fields"
            ) from None
    return tiers


def build_tenants(
    config_tenants: dict[str, Any], tiers: dict[str, TierLimits], source: str
) -> dict[str, Tenant]:
    tenants: dict[str, Tenant] = {}
    for name, table in config_tenants.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [tenants.{name}] must be a table")
        overrides = dict(table)
        tier = str(overrides.pop("tier", "basic"))
        if tier not in tiers:
            raise ConfigError(
                f"{source}: [tenants.{name}] tier: unknown tier '{tier}' — "
                f"use one of {', '.join(tiers)} or add [tiers.{tier}]"
            )
        try:
            limits = TierLimits.model_validate({**tiers[tier].model_dump(), **overrides})
        except ValidationError as exc:
            key, msg = _first_error(exc)
            raise ConfigError(
                f"{source}: [tenants.{name}] {key}: {msg} — allowed keys: tier, "
                f"{', '.join(TierLimits.model_fields)}"
            ) from None
        tenants[name] = Tenant(name, tier, limits)
    return tenants


def load_settings(herd: Herd) -> TenantsSettings:
    try:
        return TenantsSettings.model_validate(herd.plugin_settings("tenants"))
    except ValidationError as exc:
        key, msg = _first_error(exc)
        raise ConfigError(
            f"{herd.config.source}: [plugins.tenants] {key}: {msg} — allowed: "
            f"{', '.join(TenantsSettings.model_fields)}"
        ) from None


class Tenants:
    """The per-call half: registered from `startup` only when tenants are configured."""

    def __init__(
        self,
        herd: Herd,
        settings: TenantsSettings,
        tenants: dict[str, Tenant],
        tiers: dict[str, TierLimits],
    ) -> None:
        self.herd = herd
        self.settings = settings
        self.tenants = tenants
        self.tiers = tiers
        self.redis: RedisLimits | None = None
        self.redis_down_until = 0.0
        self.warned = False
        self.ids = itertools.count()
        self.model_bytes: dict[str, int | None] = {}
        self.local_memory: int | None = None

    # ---- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        if not self.settings.redis_url:
            return
        try:
            from modelherd.plugins.resources.tenants.redis_limits import RedisLimits

            self.redis = RedisLimits(self.settings.redis_url, self.settings.key_prefix)
        except ImportError:
            self.warned = True
            self.redis_down_until = float("inf")
            log.warning(
                "tenants: redis_url is set but the redis package is missing — "
                'pip install "modelherd[redis]"; enforcing quotas per process'
            )
            return
        try:
            await self.redis.ping()
        except Exception as exc:
            self._redis_failed(exc)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    def _redis_failed(self, exc: BaseException) -> None:
        self.redis_down_until = time.monotonic() + self.settings.redis_retry_s
        if not self.warned:
            self.warned = True
            log.warning(
                "tenants: Redis at %s is unreachable (%s: %s) — enforcing quotas per process "
                "until it is back",
                _safe_url(self.settings.redis_url),
                type(exc).__name__,
                exc,
            )

    def _remote(self) -> RedisLimits | None:
        if self.redis is None or time.monotonic() < self.redis_down_until:
            return None
        return self.redis

    # ---- hooks ---------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def acquire_admission(self, request: ChatRequest, herd: Herd) -> Any:
        name = request.tenant
        if name is None:
            return None
        tenant = self.tenants.get(name)
        if tenant is None:
            tenant = self._unknown(name)
        request.priority += tenant.limits.priority
        return _Gate(self, tenant, request)

    @hookimpl
    def after_call(self, request: ChatRequest, response: ChatResponse, herd: Herd) -> None:
        if request.tenant is not None and response.cache_tier is None:
            request.stash[_TOKENS_USED] = response.usage.total_tokens

    def _unknown(self, name: str) -> Tenant:
        tier = self.settings.unknown_tenant
        if tier == "reject" or tier not in self.tiers:
            raise ConfigError(
                f"unknown tenant '{name}' — add [tenants.{name}] tier = \"basic\" to "
                f'{self.herd.config.source}, or set [plugins.tenants] unknown_tenant = "basic"'
            )
        tenant = self.tenants[name] = Tenant(name, tier, self.tiers[tier])
        return tenant

    # ---- enforcement ---------------------------------------------------------

    def _refuse(self, tenant: Tenant, limit: str, detail: str, retry_after: float | None) -> None:
        if self.herd.wants_metrics:
            self.herd.emit(
                Metric(
                    "herd.tenant.rejected",
                    1,
                    attributes={"herd.tenant": tenant.name, "herd.limit": limit},
                )
            )
        when = f"retry in {retry_after:.2f}s" if retry_after is not None else "it does not reset"
        raise QuotaExceededError(
            f"tenant '{tenant.name}' ({tenant.tier}) is over its {limit} limit ({detail}) — {when}",
            retry_after=retry_after,
        )

    async def _bucket(
        self, tenant: Tenant, what: str, local: TokenBucket, cost: float, mode: str
    ) -> float:
        remote = self._remote()
        if remote is not None:
            try:
                return await remote.bucket(
                    tenant.name, what, local.rate, local.capacity, cost, mode
                )
            except Exception as exc:
                self._redis_failed(exc)
        if mode == "take":
            return local.take(cost)
        if mode == "positive":
            return local.wait_positive()
        local.charge(cost)
        return 0.0

    async def admit(self, tenant: Tenant, request: ChatRequest) -> None:
        """Every rate and budget check, before the call; raises QuotaExceededError."""
        limits = tenant.limits
        if tenant.allowed is not None and request.alias not in tenant.allowed:
            self._refuse(
                tenant,
                "allowed_models",
                f"'{request.alias}' is not in {sorted(tenant.allowed)}",
                None,
            )
        if limits.memory_share < 1.0 and request.provider in LOCAL_PROVIDERS:
            await self._check_memory(tenant, request.alias)
        if self._remote() is None:
            self._admit_local(tenant)  # no awaits on the in-process path
            return
        if tenant.rpm is not None:
            wait = await self._bucket(tenant, "rpm", tenant.rpm, 1.0, "take")
            if wait:
                self._refuse(
                    tenant, "requests_per_minute", f"{limits.requests_per_minute:g}/min", wait
                )
        if tenant.tpm is not None:
            wait = await self._bucket(tenant, "tpm", tenant.tpm, 0.0, "positive")
            if wait:
                self._refuse(tenant, "tokens_per_minute", f"{limits.tokens_per_minute:g}/min", wait)
        if limits.daily_tokens is not None:
            used = await self._day_used(tenant)
            if used >= limits.daily_tokens:
                self._refuse(
                    tenant,
                    "daily_tokens",
                    f"{used} of {limits.daily_tokens} tokens used today, resets at 00:00 UTC",
                    seconds_to_utc_midnight(),
                )

    def _admit_local(self, tenant: Tenant) -> None:
        limits = tenant.limits
        if tenant.rpm is not None:
            wait = tenant.rpm.take(1.0)
            if wait:
                self._refuse(
                    tenant, "requests_per_minute", f"{limits.requests_per_minute:g}/min", wait
                )
        if tenant.tpm is not None:
            wait = tenant.tpm.wait_positive()
            if wait:
                self._refuse(tenant, "tokens_per_minute", f"{limits.tokens_per_minute:g}/min", wait)
        if limits.daily_tokens is not None:
            used = tenant.daily.current()
            if used >= limits.daily_tokens:
                self._refuse(
                    tenant,
                    "daily_tokens",
                    f"{used} of {limits.daily_tokens} tokens used today, resets at 00:00 UTC",
                    seconds_to_utc_midnight(),
                )

    async def _day_used(self, tenant: Tenant) -> int:
        remote = self._remote()
        if remote is not None:
            try:
                return await remote.day_used(tenant.name)
            except Exception as exc:
                self._redis_failed(exc)
        return tenant.daily.current()

    async def charge(self, tenant: Tenant, tokens: int) -> None:
        """Tokens are known only after the call: charge them, into debt if need be."""
        if self._remote() is None:
            if tenant.tpm is not None:
                tenant.tpm.charge(float(tokens))
            if tenant.limits.daily_tokens is not None:
                tenant.daily.add(tokens)
            return
        if tenant.tpm is not None:
            await self._bucket(tenant, "tpm", tenant.tpm, float(tokens), "debt")
        if tenant.limits.daily_tokens is not None:
            remote = self._remote()
            if remote is not None:
                try:
                    await remote.day_add(tenant.name, tokens)
                    return
                except Exception as exc:
                    self._redis_failed(exc)
            tenant.daily.add(tokens)

    async def acquire_slot(self, tenant: Tenant, call_id: str) -> str | None:
        """Wait for a concurrency slot: "local", "redis", or None when none freed in time."""
        limit = tenant.limits.max_concurrency
        assert limit is not None and tenant.slots is not None
        remote = self._remote()
        if remote is not None:
            deadline = time.monotonic() + tenant.limits.max_wait_s
            lease = (self.herd.config.herd.timeout + 5) * (self.herd.config.herd.retries + 1)
            delay = 0.002
            try:
                while True:
                    if await remote.try_slot(tenant.name, limit, call_id, lease):
                        return "redis"
                    if time.monotonic() + delay > deadline:
                        return None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            except Exception as exc:
                self._redis_failed(exc)
        ok = await tenant.slots.acquire(tenant.limits.max_wait_s)
        return "local" if ok else None

    async def release_slot(self, tenant: Tenant, kind: str, call_id: str) -> None:
        if kind == "local":
            assert tenant.slots is not None
            tenant.slots.release()
            return
        remote = self.redis
        if remote is not None:
            try:
                await remote.release_slot(tenant.name, call_id)
            except Exception as exc:  # the lease expires on its own
                self._redis_failed(exc)

    async def _check_memory(self, tenant: Tenant, alias: str) -> None:
        if alias not in self.model_bytes:
            self.model_bytes[alias] = await asyncio.to_thread(self._estimate, alias)
        need = self.model_bytes[alias]
        if need is None:
            return
        if self.local_memory is None:
            if self.settings.local_memory_gb:
                self.local_memory = int(self.settings.local_memory_gb * 1024**3)
            else:
                import psutil

                self.local_memory = int(psutil.virtual_memory().total)
        allowed = self.local_memory * tenant.limits.memory_share
        if need > allowed:
            self._refuse(
                tenant,
                "memory_share",
                f"'{alias}' needs {need / 1024**3:.2f} GiB, the tenant's share is "
                f"{tenant.limits.memory_share:g} × {self.local_memory / 1024**3:.1f} GiB",
                None,
            )

    def _estimate(self, alias: str) -> int | None:
        try:
            from modelherd.plugins.resources.optimizer.runtime import plan_for

            return plan_for(self.herd, alias).estimate.total
        except Exception as exc:
            log.debug("tenants: no memory estimate for '%s': %s", alias, exc)
            return None


class _Gate:
    """One call's admission: checks, a concurrency slot, and the token charge at exit."""

    __slots__ = ("call_id", "owner", "request", "slot", "tenant")

    def __init__(self, owner: Tenants, tenant: Tenant, request: ChatRequest) -> None:
        self.owner = owner
        self.tenant = tenant
        self.request = request
        self.slot: str | None = None
        self.call_id = ""

    async def __aenter__(self) -> None:
        owner, tenant = self.owner, self.tenant
        await owner.admit(tenant, self.request)
        if tenant.slots is not None:
            started = time.perf_counter()
            self.call_id = f"{id(owner):x}-{next(owner.ids)}"
            self.slot = await owner.acquire_slot(tenant, self.call_id)
            waited = time.perf_counter() - started
            if owner.herd.wants_metrics:
                owner.herd.emit(
                    Metric(
                        "herd.tenant.queue_wait",
                        waited,
                        "s",
                        "histogram",
                        {"herd.tenant": tenant.name},
                    )
                )
            if self.slot is None:
                owner._refuse(
                    tenant,
                    "max_concurrency",
                    f"{tenant.limits.max_concurrency} calls running, none finished "
                    f"within {tenant.limits.max_wait_s:g}s",
                    1.0,
                )

    async def __aexit__(self, *exc: object) -> None:
        if self.slot is not None:
            await self.owner.release_slot(self.tenant, self.slot, self.call_id)
        tokens = self.request.stash.get(_TOKENS_USED, None)
        if tokens:
            await self.owner.charge(self.tenant, int(tokens))


def _safe_url(url: str | None) -> str:
    """The Redis URL without its password (never log secrets)."""
    if not url:
        return ""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def start(herd: Herd) -> Awaitable[None] | None:
    """The plugin's startup: register the per-call half only when tenants exist."""
    if not herd.config.tenants:
        return None
    source = herd.config.source
    settings = load_settings(herd)
    tiers = build_tiers(herd.config.tiers, source)
    if settings.unknown_tenant != "reject" and settings.unknown_tenant not in tiers:
        raise ConfigError(
            f"{source}: [plugins.tenants] unknown_tenant: '{settings.unknown_tenant}'"
            f' is not a tier — use "reject" or one of {", ".join(tiers)}'
        )
    plugin = Tenants(herd, settings, build_tenants(herd.config.tenants, tiers, source), tiers)
    herd.register_plugin(plugin, name="tenants-calls")
    herd.stash[RUNTIME] = plugin  # for shutdown
    return plugin.connect()


def stop(herd: Herd) -> Awaitable[None] | None:
    plugin = herd.stash.pop(RUNTIME, None)
    if plugin is None:
        return None
    herd.unregister_plugin(plugin)
    closing: Awaitable[None] = plugin.close()
    return closing
