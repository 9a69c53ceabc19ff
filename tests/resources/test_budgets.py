"""Money budgets per tenant and agent: exact limits, typed errors, alerts, Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from modelherd import hookimpl
from modelherd.errors import BudgetExceededError, ConfigError, QuotaExceededError
from modelherd.plugins import cost
from modelherd.plugins.resources.tenants import budgets
from modelherd.plugins.resources.tenants.budget_settings import resets_at
from modelherd.testing import MockModel, make_herd

pytestmark = pytest.mark.anyio

#: one output token ("ok") at 100 000 per million: every call costs exactly 0.10
PRICED = {
    "m": {
        "provider": "mock",
        "model": "mock-1",
        "price": {"input_per_mtok": 0, "output_per_mtok": 100_000},
    }
}


def herd_with(budget_table: dict[str, Any], *extra: Any, models: Any = None) -> Any:
    return make_herd(
        {"m": MockModel()},
        config={"models": models or PRICED, "plugins": {"budgets": budget_table}},
        plugins=(cost, budgets, *extra),
    )


async def test_tenant_daily_budget_admits_exactly_what_it_pays_for() -> None:
    herd = herd_with({"tenants": {"t": {"daily": 1.0}}})
    async with herd:
        for _ in range(10):
            await herd.chat("m", "hi", tenant="t")
        with pytest.raises(BudgetExceededError) as info:
            await herd.chat("m", "hi", tenant="t")
        await herd.chat("m", "hi", tenant="other")  # other tenants are not affected
    error = info.value
    assert error.budget == "tenant 't' daily"
    reset = resets_at("daily", time.time())
    assert error.resets_at == reset
    assert 0 < (error.retry_after or 0) <= 86400
    day = time.strftime("%Y-%m-%d", time.gmtime(reset))
    assert error.message == (
        f"tenant 't' daily budget is spent (1.0000 of 1 USD) — it resets at {day} 00:00 UTC; "
        f"raise [plugins.budgets.tenants.t] daily to allow more"
    )
    assert isinstance(error, QuotaExceededError)  # callers that handle quotas handle this


async def test_agent_monthly_budget() -> None:
    herd = herd_with({"agents": {"bot": {"monthly": 0.3}}})
    async with herd:
        for _ in range(3):
            await herd.chat("m", "hi", agent="bot")
        with pytest.raises(BudgetExceededError, match="agent 'bot' monthly budget is spent"):
            await herd.chat("m", "hi", agent="bot")


def test_month_reset_is_the_first_of_next_month() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    assert resets_at("monthly", at) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert resets_at("daily", at) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()


async def test_soft_alert_fires_once_at_the_fraction() -> None:
    alerts: list[Any] = []

    class Catch:
        @hookimpl
        def on_alert(self, alert: Any, herd: Any) -> None:
            alerts.append(alert)

    herd = herd_with({"alert_at": 0.5, "tenants": {"t": {"daily": 1.0}}}, Catch())
    async with herd:
        for _ in range(4):
            await herd.chat("m", "hi", tenant="t")
        assert alerts == []
        for _ in range(4):
            await herd.chat("m", "hi", tenant="t")
    assert len(alerts) == 1
    assert alerts[0].kpi == "budget"
    assert alerts[0].message == "tenant 't' daily budget is 50% spent (0.5000 of 1 USD)"


async def test_soft_alert_reaches_the_webhook() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/budget"
    herd = herd_with({"webhook_url": url, "agents": {"bot": {"daily": 0.2}}})
    try:
        async with herd:
            await herd.chat("m", "hi", agent="bot")
            await herd.chat("m", "hi", agent="bot")  # 0.2 of 0.2: past 80 %
            plugin = budgets.budgets_plugin(herd)
            assert plugin is not None and plugin.webhook is not None
            plugin.webhook.flush()
    finally:
        server.shutdown()
    (payload,) = received
    assert payload["source"] == "modelherd"
    alert = payload["alert"]
    assert (alert["kpi"], alert["scope"], alert["state"]) == (
        "budget",
        "agent 'bot' daily",
        "firing",
    )
    assert alert["value"] == pytest.approx(0.2) and alert["limit"] == 0.2


async def test_a_model_without_a_price_cannot_be_called_under_a_budget() -> None:
    models = {"m": {"provider": "mock", "model": "mock-1"}}
    herd = herd_with({"tenants": {"t": {"daily": 1.0}}}, models=models)
    async with herd:
        with pytest.raises(ConfigError) as info:
            await herd.chat("m", "hi", tenant="t")
        await herd.chat("m", "hi")  # no budget applies: allowed, cost unknown
    assert info.value.message == (
        "tenant 't' daily budget is in USD but 'm' cannot be counted against it (unknown: no "
        "price for provider 'mock' — set [models.m] price) — set [models.m] price"
    )


async def test_budgets_need_the_cost_plugin() -> None:
    herd = make_herd(
        {"m": MockModel()},
        config={
            "models": PRICED,
            "plugins": {"budgets": {"tenants": {"t": {"daily": 1}}}, "cost": {"enabled": False}},
        },
        plugins=(cost, budgets),
    )
    # a config error at startup (or at every call): never silently off
    with pytest.raises(ConfigError, match=r"\[plugins.budgets\] needs the cost plugin"):
        async with herd:
            await herd.chat("m", "hi")


async def test_a_bad_budget_key_is_one_line() -> None:
    herd = herd_with({"tenants": {"t": {"dayly": 1.0}}})
    with pytest.raises(ConfigError) as info:
        async with herd:
            await herd.chat("m", "hi", tenant="someone-else")
    assert info.value.message == (
        "test config: [plugins.budgets.tenants.t] dayly: unknown key — did you mean 'daily'? "
        "(see docs/cost.md)"
    )


async def test_unreachable_redis_refuses_calls_under_a_budget() -> None:
    herd = herd_with({"redis_url": "redis://127.0.0.1:1/0", "tenants": {"t": {"daily": 1.0}}})
    async with herd:
        with pytest.raises(QuotaExceededError) as info:
            await herd.chat("m", "hi", tenant="t")
        await herd.chat("m", "hi")  # calls outside any budget go on
    assert info.value.message.startswith(
        "money budgets cannot be checked: Redis is unreachable (ConnectionError) — calls under "
        "a budget are refused until it is back"
    )


@pytest.mark.redis
def test_two_processes_sharing_redis_get_one_budget_exactly(redis_url: str) -> None:
    worker = Path(__file__).with_name("budget_worker.py")
    prefix = f"test:budgets:{time.monotonic_ns()}"
    start_at = str(time.time() + 6)  # both start calling at once, after their imports
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), redis_url, prefix, "3", start_at],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        results.append(json.loads(out))
    # 1.00 at 0.10 a call: ten calls in all, whichever process made them
    assert sum(r["ok"] for r in results) == 10
    assert all(r["ok"] > 0 for r in results)  # both processes took part
    assert sum(r["refused"] for r in results) == 6  # every worker ended refused


@pytest.mark.redis
async def test_redis_spend_survives_a_new_process(redis_url: str) -> None:
    prefix = f"test:budgets:{time.monotonic_ns()}"
    table = {"redis_url": redis_url, "key_prefix": prefix, "tenants": {"t": {"daily": 0.2}}}
    first = herd_with(table)
    async with first:
        await first.chat("m", "hi", tenant="t")
        await first.chat("m", "hi", tenant="t")
    second = herd_with(table)
    async with second:
        with pytest.raises(BudgetExceededError):
            await second.chat("m", "hi", tenant="t")
