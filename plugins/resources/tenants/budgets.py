"""`budgets`: money budgets per tenant and per agent, per UTC day and month.

plugins.toml (docs/cost.md):

    [plugins.budgets]
    currency = "USD"
    alert_at = 0.8                  # soft alert when a budget is 80 % spent
    webhook_url = "https://…"       # optional: POST each soft alert as JSON
    redis_url = "redis://127.0.0.1:6379/0"   # default: [plugins.tenants] redis_url

    [plugins.budgets.tenants.alice]
    daily = 5.00
    monthly = 100.00

    [plugins.budgets.agents.swarm]
    daily = 1.00

A call is admitted while what was spent, plus the calls in flight, plus this call's
estimate (the alias's last cost in this process) fit every budget that applies to it;
otherwise `BudgetExceededError` names the budget and when it resets. The cost plugin
prices the call and the spend is charged when it ends. With a Redis URL the count
is shared by every process (one Lua script checks and reserves at once); if Redis
cannot be reached, calls under a budget are refused — a budget never silently lapses.
A model without a known price cannot be called under a budget (set its price).

This module is the thin entry (settings, hooks); budget_runtime.py holds the per-call
gate and the alerts, budget_store.py the counters (in process or Redis). Both are
imported only when a budget is configured.
"""

from __future__ import annotations

import calendar
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from modelherd import hookimpl
from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from modelherd.types import ChatRequest
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.tenants.budget_runtime import Budgets

log = logging.getLogger("modelherd.budgets")
HOOKS_NAME = "budgets-calls"
DOCS = "docs/cost.md"
Period = Literal["daily", "monthly"]


class BudgetLimits(LazyModel):
    model_config = ConfigDict(extra="forbid")

    daily: float | None = Field(None, gt=0)
    monthly: float | None = Field(None, gt=0)


class BudgetSettings(LazyModel):
    """`[plugins.budgets]`."""

    model_config = ConfigDict(extra="forbid")

    currency: str = "USD"
    #: fraction of a budget at which the soft alert fires (once per period)
    alert_at: float | None = Field(0.8, gt=0, lt=1)
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(3.0, gt=0)
    redis_url: str | None = None
    key_prefix: str = "herd:budgets"
    tenants: dict[str, BudgetLimits] = Field(default_factory=dict)
    agents: dict[str, BudgetLimits] = Field(default_factory=dict)


def period_key(period: Period, at: float) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y%m%d" if period == "daily" else "%Y%m")


def resets_at(period: Period, at: float) -> float:
    """The epoch second the period that contains `at` ends (UTC)."""
    moment = datetime.fromtimestamp(at, UTC)
    if period == "daily":
        start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC).timestamp()
        return start + 86400
    days = calendar.monthrange(moment.year, moment.month)[1]
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp() + days * 86400


def load_settings(herd: Herd) -> BudgetSettings:
    table = dict(herd.plugin_settings("budgets"))
    if "redis_url" not in table:
        shared = herd.plugin_settings("tenants").get("redis_url")
        if shared:
            table["redis_url"] = shared
    return check_budgets_table(table, herd.config.source)


def check_budgets_table(table: dict[str, Any], source: str) -> BudgetSettings:
    """`[plugins.budgets]` and each budget table below it (also register_settings)."""
    from modelherd.config import validate_table

    for scope in ("tenants", "agents"):
        names = table.get(scope)
        if not isinstance(names, dict):
            continue
        for name, limits in names.items():
            # each budget table on its own, so a typo is named where it is
            where = f"{source}: [plugins.budgets.{scope}.{name}]"
            if not isinstance(limits, dict):
                raise ConfigError(f"{where} must be a table like {{ daily = 5.0 }} (see {DOCS})")
            validate_table(BudgetLimits, limits, where, DOCS)
    return validate_table(BudgetSettings, table, f"{source}: [plugins.budgets]", DOCS)


class _Misconfigured:
    """Stands in for the budgets when their config is wrong: refuses every call.

    A startup error may be recorded rather than raised (one broken plugin must not
    take the CLI down), so the error is also raised by every call: a budget that
    cannot be read is never "off".
    """

    def __init__(self, error: ConfigError) -> None:
        self.error = error

    @hookimpl(tryfirst=True)
    def acquire_admission(self, request: ChatRequest, herd: Herd) -> Any:
        raise ConfigError(self.error.message)


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("budgets", check_budgets_table, DOCS)


@hookimpl
def startup(herd: Herd) -> Awaitable[None] | None:
    table = herd.plugin_settings("budgets")
    if not table or herd.pm.get_plugin(HOOKS_NAME) is not None:
        return None
    try:
        return _start(herd)
    except ConfigError as exc:
        herd.register_plugin(_Misconfigured(exc), name=HOOKS_NAME)
        raise


def _start(herd: Herd) -> Awaitable[None] | None:
    settings = load_settings(herd)
    if not settings.tenants and not settings.agents:
        return None
    cost_off = herd.plugin_settings("cost").get("enabled") is False
    if cost_off or "cost" in herd.config.disabled_plugins:
        raise ConfigError(
            f"{herd.config.source}: [plugins.budgets] needs the cost plugin, which is off — "
            f"enable it again (or remove the budgets)"
        )
    for alias, table in herd.config.models.items():
        price = table.get("price") if isinstance(table, dict) else None
        currency = price.get("currency", "USD") if isinstance(price, dict) else None
        if currency is not None and currency != settings.currency:
            raise ConfigError(
                f"{herd.config.source}: [models.{alias}] price currency '{currency}' differs "
                f"from [plugins.budgets] currency '{settings.currency}' — use one currency"
            )
    from modelherd.plugins.cost.prices import PriceBook
    from modelherd.plugins.resources.tenants.budget_runtime import Budgets

    plugin = Budgets(herd, settings, PriceBook())
    if settings.webhook_url:
        from modelherd.plugins.observability.alerts.notify import WebhookSender

        plugin.webhook = WebhookSender(settings.webhook_url, settings.webhook_timeout_s)
    herd.register_plugin(plugin, name=HOOKS_NAME)
    return _connect(herd, plugin)


async def _connect(herd: Herd, plugin: Budgets) -> None:
    try:
        await plugin.connect()
    except ConfigError as exc:
        herd.unregister_plugin(plugin)
        herd.register_plugin(_Misconfigured(exc), name=HOOKS_NAME)
        raise
    except Exception as exc:
        # fail closed: keep the plugin registered; every gated call retries Redis
        log.warning("budgets: Redis is unreachable at startup (%s)", type(exc).__name__)


def budgets_plugin(herd: Herd) -> Budgets | None:
    if not herd.plugins_loaded:
        return None
    plugin = herd.pm.get_plugin(HOOKS_NAME)
    # the hooks object is a Budgets or a _Misconfigured stand-in
    return None if plugin is None or isinstance(plugin, _Misconfigured) else plugin


@hookimpl
def shutdown(herd: Herd) -> Awaitable[None] | None:
    if not herd.plugins_loaded:
        return None
    plugin = herd.pm.get_plugin(HOOKS_NAME)
    if plugin is None:
        return None
    herd.unregister_plugin(plugin)
    return None if isinstance(plugin, _Misconfigured) else plugin.close()
