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
"""

from __future__ import annotations

import asyncio
import calendar
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from modelherd import hookimpl
from modelherd.errors import BudgetExceededError, ConfigError, QuotaExceededError
from modelherd.lazy_model import LazyModel
from modelherd.plugins.resources.tenants.budget_store import (
    BUSY,
    NANO,
    LocalBudgetStore,
    RedisBudgetStore,
    Window,
    to_nano,
)
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from modelherd.kernel import Herd
    from modelherd.plugins.cost.prices import PriceBook

log = logging.getLogger("modelherd.budgets")
HOOKS_NAME = "budgets-calls"
DOCS = "docs/cost.md"
Period = Literal["daily", "monthly"]
#: the call's budget gate, for after_call to hand it the cost
_GATE = StashKey["_Gate"]()


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


class BudgetAlert:
    """A soft-budget alert, shaped like the KPI alerts for `on_alert` and webhooks."""

    def __init__(self, budget: str, spent: float, limit: float, fraction: float, cur: str) -> None:
        self.kpi = "budget"
        self.scope = budget
        self.state = "firing"
        self.value = spent
        self.threshold = limit * fraction
        self.limit = limit
        self.currency = cur
        self.at = time.time()
        self.since = self.at
        self.message = (
            f"{budget} budget is {spent / limit:.0%} spent ({spent:.4f} of {limit:g} {cur})"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Budget:
    def __init__(self, scope: str, name: str, period: Period, limit: float) -> None:
        self.scope = scope
        self.name = name
        self.period = period
        self.limit = limit

    @property
    def label(self) -> str:
        return f"{self.scope} '{self.name}' {self.period}"

    def window(self, prefix: str, at: float) -> Window:
        ttl = 2 * 86400 if self.period == "daily" else 40 * 86400
        key = f"{prefix}:{self.scope}:{self.name}:{self.period}:{period_key(self.period, at)}"
        return Window(key, to_nano(self.limit), ttl)


class Budgets:
    """The per-call half: registered from `startup` only when a budget is configured."""

    def __init__(self, herd: Herd, settings: BudgetSettings, book: PriceBook) -> None:
        self.herd = herd
        self.settings = settings
        self.book = book
        self.by_scope: dict[tuple[str, str], list[_Budget]] = {}
        for scope, table in (("tenant", settings.tenants), ("agent", settings.agents)):
            for name, limits in table.items():
                for period in ("daily", "monthly"):
                    limit = getattr(limits, period)
                    if limit is not None:
                        self.by_scope.setdefault((scope, name), []).append(
                            _Budget(scope, name, period, limit)
                        )
        self.store: LocalBudgetStore | RedisBudgetStore = LocalBudgetStore()
        self.ids = itertools.count()
        self.webhook: Any = None
        self.alerts: list[BudgetAlert] = []

    async def connect(self) -> None:
        url = self.settings.redis_url
        if not url:
            return
        try:
            self.store = RedisBudgetStore(url, self.settings.key_prefix)
        except ImportError:
            raise ConfigError(
                f"{self.herd.config.source}: [plugins.budgets] redis_url is set but the redis "
                f'package is missing — pip install "modelherd[redis]"'
            ) from None
        await self.store.ping()

    async def close(self) -> None:
        await self.store.aclose()
        if self.webhook is not None:
            self.webhook.close()

    def budgets_for(self, request: ChatRequest) -> list[_Budget]:
        found: list[_Budget] = []
        if request.tenant is not None:
            found += self.by_scope.get(("tenant", request.tenant), [])
        if request.agent is not None:
            found += self.by_scope.get(("agent", request.agent), [])
        return found

    @hookimpl(tryfirst=True)
    def acquire_admission(self, request: ChatRequest, herd: Herd) -> Any:
        budgets = self.budgets_for(request)
        if not budgets:
            return None
        rates = self.book.rates(herd.resolve(request.alias))
        if not rates.known or rates.currency != self.settings.currency:
            why = rates.source if not rates.known else f"it is priced in {rates.currency}"
            raise ConfigError(
                f"{budgets[0].label} budget is in {self.settings.currency} but '{request.alias}' "
                f"cannot be counted against it ({why}) — set [models.{request.alias}] price"
            )
        gate = _Gate(self, budgets, request)
        request.stash[_GATE] = gate
        return gate

    @hookimpl
    def after_call(self, request: ChatRequest, response: ChatResponse, herd: Herd) -> None:
        gate = request.stash.get(_GATE, None)
        cost = response.usage.cost
        if gate is not None and cost is not None and cost.amount:
            gate.amount = to_nano(cost.amount)

    def refuse(self, budget: _Budget, spent: int, at: float) -> BudgetExceededError:
        reset = resets_at(budget.period, at)
        when = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%d %H:%M UTC")
        cur = self.settings.currency
        return BudgetExceededError(
            f"{budget.label} budget is spent ({spent / NANO:.4f} of {budget.limit:g} {cur}) — "
            f"it resets at {when}; raise [plugins.budgets.{budget.scope}s.{budget.name}] "
            f"{budget.period} to allow more",
            budget=budget.label,
            resets_at=reset,
            retry_after=max(reset - time.time(), 0.0),
        )

    def unavailable(self, exc: BaseException) -> QuotaExceededError:
        return QuotaExceededError(
            f"money budgets cannot be checked: Redis is unreachable ({type(exc).__name__}) — "
            f"calls under a budget are refused until it is back; check [plugins.budgets] "
            f"redis_url",
            retry_after=5.0,
        )

    def alert(self, budget: _Budget, before: int, after: int) -> None:
        fraction = self.settings.alert_at
        if fraction is None:
            return
        line = to_nano(budget.limit * fraction)
        if before < line <= after:  # INCRBY is atomic: exactly one process sees the crossing
            event = BudgetAlert(
                budget.label, after / NANO, budget.limit, fraction, self.settings.currency
            )
            self.alerts.append(event)
            del self.alerts[:-100]
            log.warning("[BUDGET] %s", event.message)
            if self.webhook is not None:
                self.webhook.send({"source": "modelherd", "alert": event.to_dict()})
            self.herd.call_each("on_alert", alert=event, herd=self.herd)


class _Gate:
    """One call under budgets: check and reserve on entry, charge the real cost on exit."""

    __slots__ = ("alias", "amount", "at", "budgets", "call_id", "owner", "windows")

    def __init__(self, owner: Budgets, budgets: list[_Budget], request: ChatRequest) -> None:
        self.owner = owner
        self.budgets = budgets
        self.alias = request.alias
        self.at = time.time()
        self.windows = [b.window(owner.settings.key_prefix, self.at) for b in budgets]
        self.call_id = f"{id(owner):x}-{next(owner.ids)}"
        self.amount = 0

    async def __aenter__(self) -> None:
        owner = self.owner
        lease = (owner.herd.config.herd.timeout + 5) * (owner.herd.config.herd.retries + 1)
        delay = 0.002
        while True:
            try:
                full = await owner.store.admit(self.windows, self.call_id, self.alias, lease)
            except Exception as exc:
                raise owner.unavailable(exc) from None
            if full is None:
                return
            if full != BUSY:
                index, spent = full
                raise owner.refuse(self.budgets[index], spent, self.at)
            # a probe (no cost known yet) or a call that fits only if the calls in
            # flight cost less than reserved: wait for them to finish
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def __aexit__(self, *exc: object) -> None:
        owner = self.owner
        try:
            spent = await owner.store.charge(self.windows, self.call_id, self.alias, self.amount)
        except Exception as error:  # the reservation expires on its own; the spend is lost
            log.warning(
                "budgets: could not charge %s to Redis (%s); this call's cost is not counted",
                self.amount / NANO,
                type(error).__name__,
            )
            return
        for budget, after in zip(self.budgets, spent, strict=True):
            owner.alert(budget, after - self.amount, after)


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
    return plugin if isinstance(plugin, Budgets) else None


@hookimpl
def shutdown(herd: Herd) -> Awaitable[None] | None:
    if not herd.plugins_loaded:
        return None
    plugin = herd.pm.get_plugin(HOOKS_NAME)
    if plugin is None:
        return None
    herd.unregister_plugin(plugin)
    return plugin.close() if isinstance(plugin, Budgets) else None
