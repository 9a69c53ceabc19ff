"""The per-call half of `budgets`: the gate each call under a budget passes, and the
soft alerts. Imported by `startup` only when a budget is configured (budgets.py is the
thin entry every command loads)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.errors import BudgetExceededError, ConfigError, QuotaExceededError
from modelherd.plugins.resources.tenants.budget_settings import (
    Period,
    period_key,
    resets_at,
)
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

if TYPE_CHECKING:
    from modelherd.kernel import Herd
    from modelherd.plugins.cost.prices import PriceBook
    from modelherd.plugins.resources.tenants.budget_settings import BudgetSettings

log = logging.getLogger("modelherd.budgets")
#: the call's budget gate, for after_call to hand it the cost
_GATE = StashKey["_Gate"]()


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
