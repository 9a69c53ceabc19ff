"""The tenants' configuration, typed and checked in full before anything runs.

`load_tenants_config(config)` reads `[plugins.tenants]`, `[tiers.*]` and `[tenants.*]`
and returns a `TenantsConfig`, or raises one ConfigError line naming the file, the
table, the key and the fix. A guard whose config is wrong must be an error, never
"off": the plugin calls it at startup and the error stops the command (exit 2).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelherd.config import validate_table
from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from modelherd.config import HerdConfig

DOCS = "docs/resources.md"
#: the default Redis key prefix of the quota buckets; the cache's is "herd:cache:"
QUOTA_PREFIX = "herd:tenants"
#: the Redis cache tier's default prefix (plugins/cache/redis.py)
CACHE_PREFIX = "herd:cache:"
#: the name every unconfigured tenant shares (unknown_tenant = "<tier>"): configured
#: names cannot take it (see TENANT_NAME)
SHARED_UNKNOWN = "~unknown"
#: configured tenant names: they become Redis key segments and metric attributes
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")


class TierLimits(LazyModel):
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


class TenantTable(TierLimits):
    """A `[tenants.<name>]` table: a tier and any tier field overridden."""

    tier: str = "basic"


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


class TenantsSettings(LazyModel):
    """`[plugins.tenants]`."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = None
    key_prefix: str = QUOTA_PREFIX
    #: a call naming a tenant that is not configured: "reject", or a tier whose limits
    #: every such caller shares (one bucket for all of them, never one each)
    unknown_tenant: str = "reject"
    #: the tenant a call without tenant= counts as; unset: such calls are refused
    default_tenant: str | None = None
    #: processes (workers, hosts) expected to share the Redis limits: while Redis is
    #: down each one enforces limit / replicas locally
    replicas: int = Field(1, ge=1)
    #: seconds before trying Redis again after it failed
    redis_retry_s: float = Field(30.0, gt=0)
    #: local model memory the shares refer to; default: total RAM
    local_memory_gb: float | None = Field(None, gt=0)


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """One configured tenant: its tier and effective limits."""

    name: str
    tier: str
    limits: TierLimits


@dataclass(frozen=True, slots=True)
class TenantsConfig:
    """Everything the tenants plugin enforces, validated."""

    settings: TenantsSettings
    tiers: dict[str, TierLimits]
    tenants: dict[str, TenantSpec]

    @property
    def unknown_tier(self) -> TierLimits | None:
        """The limits every unconfigured tenant shares, or None: they are refused."""
        tier = self.settings.unknown_tenant
        return None if tier == "reject" else self.tiers[tier]


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def build_tiers(config_tiers: dict[str, Any], source: str) -> dict[str, TierLimits]:
    tiers: dict[str, TierLimits] = {}
    names = list(DEFAULT_TIERS) + [n for n in config_tiers if n not in DEFAULT_TIERS]
    for name in names:
        table = config_tiers.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [tiers.{name}] must be a table — see {DOCS}")
        where = f"{source}: [tiers.{name}]"
        tiers[name] = validate_table(
            TierLimits, {**DEFAULT_TIERS.get(name, {}), **table}, where, DOCS
        )
    return tiers


def build_tenants(
    config_tenants: dict[str, Any], tiers: dict[str, TierLimits], source: str
) -> dict[str, TenantSpec]:
    tenants: dict[str, TenantSpec] = {}
    for name, table in config_tenants.items():
        where = f"{source}: [tenants.{name}]"
        if not TENANT_NAME.match(name):
            raise ConfigError(
                f"{where}: '{name}' is not a usable tenant name — use 1-64 letters, digits "
                f"and _ . @ + - (starting with a letter or digit)"
            )
        if not isinstance(table, dict):
            raise ConfigError(f'{where} must be a table — e.g. [tenants.{name}] tier = "basic"')
        tier = table.get("tier", "basic")
        if not isinstance(tier, str) or tier not in tiers:
            raise ConfigError(
                f"{where} tier: unknown tier '{tier}' — {_did_you_mean(str(tier), list(tiers))}"
                f"use one of {', '.join(tiers)} or add [tiers.{tier}]"
            )
        merged = {**tiers[tier].model_dump(), **table}
        parsed = validate_table(TenantTable, merged, where, DOCS)
        limits = TierLimits.model_validate(parsed.model_dump(exclude={"tier"}))
        tenants[name] = TenantSpec(name, tier, limits)
    return tenants


def load_tenants_config(config: HerdConfig) -> TenantsConfig:
    """Read and check every tenants table; one ConfigError line for the first problem."""
    source = config.source
    where = f"{source}: [plugins.tenants]"
    settings = check_tenants_table(config.plugin_settings("tenants"), source)
    tiers = build_tiers(config.tiers, source)
    tenants = build_tenants(config.tenants, tiers, source)
    unknown = settings.unknown_tenant
    if unknown != "reject" and unknown not in tiers:
        raise ConfigError(
            f"{where} unknown_tenant: '{unknown}' is not a tier — "
            f'{_did_you_mean(unknown, list(tiers))}use "reject" or one of {", ".join(tiers)}'
        )
    default = settings.default_tenant
    if default is not None and default not in tenants:
        configured = ", ".join(tenants) or "none"
        raise ConfigError(
            f"{where} default_tenant: '{default}' is not a configured tenant — "
            f"{_did_you_mean(default, list(tenants))}add [tenants.{default}] or use one "
            f"of: {configured}"
        )
    _check_prefixes(config, settings, where)
    return TenantsConfig(settings, tiers, tenants)


def check_tenants_table(table: dict[str, Any], source: str) -> TenantsSettings:
    """`[plugins.tenants]` on its own (register_settings checks it on every command)."""
    where = f"{source}: [plugins.tenants]"
    settings = validate_table(TenantsSettings, table, where, DOCS)
    if settings.redis_url is not None and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(
            f"{where} redis_url: must start with redis://, rediss:// (TLS) or unix:// — "
            f"fix that value (see {DOCS})"
        )
    if not settings.key_prefix:
        raise ConfigError(f'{where} key_prefix: must not be empty — e.g. "{QUOTA_PREFIX}"')
    return settings


def _check_prefixes(config: HerdConfig, settings: TenantsSettings, where: str) -> None:
    """Quota keys and cache keys must not overlap, or `herd cache clear` (which deletes
    the cache prefix) would reset every tenant's usage."""
    if settings.redis_url is None or "cache_redis" not in config.plugins:
        return
    cache = str(config.plugin_settings("cache_redis").get("prefix", CACHE_PREFIX))
    quota = settings.key_prefix
    if cache.startswith(quota) or quota.startswith(cache):
        raise ConfigError(
            f"{where} key_prefix: '{quota}' overlaps the cache's prefix '{cache}' "
            f"([plugins.cache_redis] prefix) — use disjoint prefixes, e.g. the defaults "
            f'key_prefix = "{QUOTA_PREFIX}" and prefix = "{CACHE_PREFIX}"'
        )
