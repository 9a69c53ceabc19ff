"""`tenants`: per-tenant quotas — `herd.chat(..., tenant="alice")`.

plugins.toml:

    [tenants.alice]
    tier = "premium"
    requests_per_minute = 1200      # any tier field may be overridden per tenant

    [tiers.basic]                   # override a built-in tier (or define a new one)
    daily_tokens = 100000

    [plugins.tenants]
    default_tenant = "alice"                 # calls without tenant= count as alice
    unknown_tenant = "basic"                 # unconfigured names share ONE basic bucket
    redis_url = "redis://127.0.0.1:6379/0"   # share limits across processes
    replicas = 4                             # while Redis is down each enforces 1/4

Built-in tiers follow the runbook's isolation table (basic / standard / premium /
dedicated: 4 / 8 / 16 GB / exclusive memory, standard / guaranteed / premium /
highest priority), see `DEFAULT_TIERS`. A call over a limit raises
`QuotaExceededError` naming the limit and when it resets; other tenants are not
affected. Rate limits reject at once (with `retry_after`); `max_concurrency` makes
the call wait for a slot up to `max_wait_s`.

Fail closed: with tenants configured, a call without tenant= is refused
(`TenantRequiredError`) unless `default_tenant` is set; a config error stops the
command at startup. With no `[tenants.*]` table this plugin registers no per-call hook.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.errors import QuotaExceededError, TenantRequiredError, UnknownTenantError
from modelherd.plugins.resources.tenants import RUNTIME
from modelherd.plugins.resources.tenants.settings import (
    DEFAULT_TIERS,
    SHARED_UNKNOWN,
    TenantsConfig,
    TenantSpec,
    TenantsSettings,
    TierLimits,
    build_tenants,
    build_tiers,
    load_tenants_config,
)
from modelherd.plugins.resources.tenants.state import RateLimit, Tenant
from modelherd.plugins.resources.tenants.token_bucket import seconds_to_utc_midnight
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse, Metric

if TYPE_CHECKING:
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.tenants.redis_limits import RedisLimits

__all__ = [
    "DEFAULT_TIERS",
    "Tenant",
    "Tenants",
    "TenantsSettings",
    "TierLimits",
    "build_tenants",
    "build_tiers",
    "start",
    "stop",
]

#: tokens the call used, handed from after_call to the admission gate's exit
_TOKENS_USED = StashKey[int]()

log = logging.getLogger("modelherd.tenants")

LOCAL_PROVIDERS = ("llamacpp", "ollama")


class Tenants:
    """The per-call half: registered from `startup` only when tenants are configured."""

    def __init__(self, herd: Herd, config: TenantsConfig) -> None:
        self.herd = herd
        self.config = config
        self.settings = config.settings
        self.tiers = config.tiers
        # a process enforces its share only when Redis is there to share with
        self.share = 1.0 / self.settings.replicas if self.settings.redis_url else 1.0
        #: configured tenants only: invented names never add an entry (bounded state)
        self.tenants: dict[str, Tenant] = {
            name: Tenant.build(spec, self.share) for name, spec in config.tenants.items()
        }
        unknown = config.unknown_tier
        self.unknown: Tenant | None = None
        if unknown is not None:
            spec = TenantSpec(SHARED_UNKNOWN, self.settings.unknown_tenant, unknown)
            self.unknown = Tenant.build(spec, self.share, shared=True)
        self.redis: RedisLimits | None = None
        self.redis_down_until = 0.0
        #: True from a Redis failure until the local usage is carried back to it
        self.outage = False
        self._probing = False
        self.outages = 0
        self.warned = False
        self.ids = itertools.count()
        self.model_bytes: dict[str, int | None] = {}
        self.local_memory: int | None = None

    def all_tenants(self) -> list[Tenant]:
        found = list(self.tenants.values())
        return [*found, self.unknown] if self.unknown is not None else found

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
            self.outage = True
            log.warning(
                "tenants: redis_url is set but the redis package is missing — "
                'pip install "modelherd[redis]"; enforcing quotas per process%s',
                _share_note(self.settings.replicas),
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

    # ---- Redis, its outages, and carrying local usage forward ----------------

    def _redis_failed(self, exc: BaseException) -> None:
        self.redis_down_until = time.monotonic() + self.settings.redis_retry_s
        if self.outage:
            return
        self.outage = True
        self.outages += 1
        for tenant in self.all_tenants():
            for limit in (tenant.rpm, tenant.tpm):
                if limit is not None:
                    limit.start_local(tenant.share)
        self._emit_outage(1.0)
        if not self.warned:  # said once per process; later outages are metrics
            self.warned = True
            log.warning(
                "tenants: Redis at %s is unreachable (%s: %s) — enforcing quotas per process%s "
                "until it is back; what this process admits meanwhile is charged to Redis then",
                _safe_url(self.settings.redis_url),
                type(exc).__name__,
                exc,
                _share_note(self.settings.replicas),
            )

    def _emit_outage(self, value: float) -> None:
        if self.herd.wants_metrics:
            self.herd.emit(Metric("herd.tenant.redis_fallback", value, "1", "gauge", {}))

    async def _remote(self) -> RedisLimits | None:
        """Redis when it is usable now; after an outage, first charge it what this
        process admitted meanwhile. None: enforce the local share."""
        redis = self.redis
        if redis is None:
            return None
        if not self.outage:
            return redis
        if time.monotonic() < self.redis_down_until or self._probing:
            return None
        self._probing = True  # one call probes and carries forward; the others go local
        try:
            await redis.reset()
            carried = await self._carry_forward(redis)
        except Exception as exc:
            self._redis_failed(exc)  # still down: wait redis_retry_s again
            return None
        finally:
            self._probing = False
        self.outage = False
        self._emit_outage(0.0)
        log.info(
            "tenants: Redis at %s is back; charged it %s admitted locally meanwhile",
            _safe_url(self.settings.redis_url),
            carried,
        )
        return redis

    async def _carry_forward(self, redis: RedisLimits) -> str:
        requests = tokens = 0.0
        for tenant in self.all_tenants():
            if not tenant.has_pending():
                continue
            for what, limit in (("rpm", tenant.rpm), ("tpm", tenant.tpm)):
                if limit is None or not limit.pending:
                    continue
                amount, limit.pending = limit.pending, 0.0
                try:
                    _, limit.remote_left = await redis.bucket(
                        tenant.name, what, limit.rate, limit.capacity, amount, "debt"
                    )
                except BaseException:
                    limit.pending += amount
                    raise
                if what == "rpm":
                    requests += amount
                else:
                    tokens += amount
            if tenant.day_pending:
                amount, tenant.day_pending = tenant.day_pending, 0
                try:
                    await redis.day_add(tenant.name, amount)
                except BaseException:
                    tenant.day_pending += amount
                    raise
        return f"{requests:g} requests and {tokens:g} tokens"

    # ---- hooks ---------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def acquire_admission(self, request: ChatRequest, herd: Herd) -> Any:
        name = request.tenant
        if name is None:
            name = self.settings.default_tenant
            if name is None:
                raise TenantRequiredError(
                    f"this call names no tenant, and {herd.config.source} configures tenants "
                    f'({", ".join(self.tenants)}) — pass tenant="<name>" (herd chat '
                    f'--tenant NAME) or set [plugins.tenants] default_tenant = "<name>"'
                )
            request.tenant = name  # counted, cached and logged as the default tenant
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
        if self.unknown is None:
            raise UnknownTenantError(
                f"unknown tenant '{_shown(name)}' — add [tenants.{_shown(name)}] tier = \"basic\" to "
                f'{self.herd.config.source}, or set [plugins.tenants] unknown_tenant = "basic" '
                f"(all unconfigured tenants then share one basic bucket)"
            )
        return self.unknown

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
        who = (
            f"unconfigured tenants (sharing one {tenant.tier} bucket)"
            if tenant.shared
            else f"tenant '{tenant.name}' ({tenant.tier})"
        )
        raise QuotaExceededError(
            f"{who} is over its {limit} limit ({detail}) — {when}", retry_after=retry_after
        )

    async def _take(self, tenant: Tenant, what: str, limit: RateLimit, mode: str) -> float:
        """One rate check ("take" one request, or "positive": not in token debt)."""
        remote = await self._remote()
        if remote is not None:
            try:
                cost = 1.0 if mode == "take" else 0.0
                wait, limit.remote_left = await remote.bucket(
                    tenant.name, what, limit.rate, limit.capacity, cost, mode
                )
                return wait
            except Exception as exc:
                self._redis_failed(exc)
        return self._take_local(limit, mode)

    def _take_local(self, limit: RateLimit, mode: str) -> float:
        if mode == "positive":
            return limit.local.wait_positive()
        wait = limit.local.take(1.0)
        if not wait and self.redis is not None:
            limit.pending += 1.0
        return wait

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
        if self.redis is None:
            self._admit_local(tenant)  # no awaits on the in-process path
            return
        if tenant.rpm is not None:
            wait = await self._take(tenant, "rpm", tenant.rpm, "take")
            if wait:
                self._refuse(
                    tenant, "requests_per_minute", f"{limits.requests_per_minute:g}/min", wait
                )
        if tenant.tpm is not None:
            wait = await self._take(tenant, "tpm", tenant.tpm, "positive")
            if wait:
                self._refuse(tenant, "tokens_per_minute", f"{limits.tokens_per_minute:g}/min", wait)
        if limits.daily_tokens is not None:
            self._check_day(tenant, await self._day_used(tenant))

    def _admit_local(self, tenant: Tenant) -> None:
        limits = tenant.limits
        if tenant.rpm is not None:
            wait = self._take_local(tenant.rpm, "take")
            if wait:
                self._refuse(
                    tenant, "requests_per_minute", f"{limits.requests_per_minute:g}/min", wait
                )
        if tenant.tpm is not None:
            wait = self._take_local(tenant.tpm, "positive")
            if wait:
                self._refuse(tenant, "tokens_per_minute", f"{limits.tokens_per_minute:g}/min", wait)
        if limits.daily_tokens is not None:
            self._check_day(tenant, tenant.daily.current())

    def _check_day(self, tenant: Tenant, used: int) -> None:
        budget = tenant.limits.daily_tokens
        if budget is not None and used >= budget:
            self._refuse(
                tenant,
                "daily_tokens",
                f"{used} of {budget} tokens used today, resets at 00:00 UTC",
                seconds_to_utc_midnight(),
            )

    async def _day_used(self, tenant: Tenant) -> int:
        remote = await self._remote()
        if remote is not None:
            try:
                tenant.day_seen = await remote.day_used(tenant.name)
                return tenant.day_seen
            except Exception as exc:
                self._redis_failed(exc)
        return tenant.local_day_used()

    async def charge(self, tenant: Tenant, tokens: int) -> None:
        """Tokens are known only after the call: charge them, into debt if need be."""
        if self.redis is None:
            if tenant.tpm is not None:
                tenant.tpm.local.charge(float(tokens))
            if tenant.limits.daily_tokens is not None:
                tenant.daily.add(tokens)
            return
        remote = await self._remote()
        if tenant.tpm is not None:
            limit = tenant.tpm
            charged = False
            if remote is not None:
                try:
                    _, limit.remote_left = await remote.bucket(
                        tenant.name, "tpm", limit.rate, limit.capacity, float(tokens), "debt"
                    )
                    charged = True
                except Exception as exc:
                    self._redis_failed(exc)
                    remote = None
            if not charged:
                limit.local.charge(float(tokens))
                limit.pending += float(tokens)
        if tenant.limits.daily_tokens is not None:
            if remote is not None:
                try:
                    await remote.day_add(tenant.name, tokens)
                    return
                except Exception as exc:
                    self._redis_failed(exc)
            tenant.day_pending += tokens

    async def acquire_slot(self, tenant: Tenant, call_id: str) -> str | None:
        """Wait for a concurrency slot: "local", "redis", or None when none freed in time."""
        limit = tenant.limits.max_concurrency
        assert limit is not None and tenant.slots is not None
        remote = await self._remote()
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


def _share_note(replicas: int) -> str:
    if replicas == 1:
        return (
            " (replicas = 1: each process allows the whole limit; set [plugins.tenants] replicas)"
        )
    return f" (each allows 1/{replicas} of each limit: replicas = {replicas})"


def _shown(name: str) -> str:
    """A caller-chosen name, safe to print in one line (bounded, no control chars)."""
    text = "".join(c if c.isprintable() else "?" for c in name[:64])
    return text + ("…" if len(name) > 64 else "")


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
    """The plugin's startup: check the whole config, then register the per-call half."""
    if not herd.config.tenants:
        return None
    return _start(herd)


async def _start(herd: Herd) -> None:
    # checked inside the awaitable: the kernel awaits it outside its per-plugin error
    # isolation, so a wrong quota config stops `herd.start()` (exit 2 in the CLI)
    # instead of being recorded as one more broken plugin while calls go unlimited
    plugin = Tenants(herd, load_tenants_config(herd.config))
    herd.register_plugin(plugin, name="tenants-calls")
    herd.stash[RUNTIME] = plugin  # for shutdown
    await plugin.connect()


def stop(herd: Herd) -> Awaitable[None] | None:
    plugin = herd.stash.pop(RUNTIME, None)
    if plugin is None:
        return None
    herd.unregister_plugin(plugin)
    closing: Awaitable[None] = plugin.close()
    return closing
