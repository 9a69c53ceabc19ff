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

This module is the thin entry (hooks); budget_settings.py holds the settings and the
periods, budget_runtime.py the per-call gate and the alerts, budget_store.py the counters
(in process or Redis). They are imported only when a budget is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.errors import ConfigError

if TYPE_CHECKING:
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.tenants.budget_runtime import Budgets
    from modelherd.plugins.resources.tenants.budget_settings import BudgetSettings
    from modelherd.types import ChatRequest

log = logging.getLogger("modelherd.budgets")
HOOKS_NAME = "budgets-calls"
DOCS = "docs/cost.md"


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


def _check_table(table: dict[str, Any], source: str) -> BudgetSettings:
    from modelherd.plugins.resources.tenants.budget_settings import check_budgets_table

    return check_budgets_table(table, source)


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("budgets", _check_table, DOCS)


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
    from modelherd.plugins.resources.tenants.budget_settings import load_settings

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
