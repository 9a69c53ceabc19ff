"""`[plugins.budgets]`: the settings, their check, and the budget periods.

Imported when there is a `[plugins.budgets]` table to check or a budget to run, not by
every start (building its classes costs ~4 M instructions); budgets.py is
the thin entry.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from modelherd.plugins.resources.tenants.budgets import DOCS
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from modelherd.kernel import Herd

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
