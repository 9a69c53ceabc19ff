"""Risk agent: silent within limits; bounded action on a breach; keeps everything on error."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from agent_helpers import mock
from modelherd import hookimpl
from modelherd.agents.portfolio import Portfolio
from modelherd.errors import ProviderError


class AlertSink:
    __name__ = "alert-sink"

    def __init__(self) -> None:
        self.alerts: list[Any] = []

    @hookimpl
    def on_alert(self, alert: Any, herd: Any) -> None:
        self.alerts.append(alert)


def losing_portfolio() -> Portfolio:
    p = Portfolio(name="paper")
    p.buy("BTC", 6000, 100.0, reason="t")
    p.buy("ETH", 3000, 10.0, reason="t")
    return p


def check(herd: Any, portfolio: Portfolio, prices: dict[str, float], **settings: Any) -> Any:
    agent = herd.agent("risk", **settings)
    return anyio.run(lambda: agent.check(portfolio, prices))


def test_within_limits_asks_nobody(herd_factory: Any) -> None:
    model = mock("r")
    herd = herd_factory({"r": model}, {"risk": {"model": "r"}})
    report = check(herd, losing_portfolio(), {"BTC": 100.0, "ETH": 10.0}, max_exposure_pct=95)
    assert report.breaches == [] and report.action == "none" and model.history == []


def test_breach_reduces_one_position_within_the_cap(herd_factory: Any) -> None:
    sink = AlertSink()
    model = mock(
        "r",
        json.dumps(
            {
                "action": "REDUCE",
                "symbol": "BTC",
                "fraction": 0.9,
                "confidence": 0.8,
                "reasoning": "too big",
            }
        ),
    )
    herd = herd_factory({"r": model}, {"risk": {"model": "r"}})
    herd.register_plugin(sink)
    portfolio = losing_portfolio()
    report = check(herd, portfolio, {"BTC": 70.0, "ETH": 10.0})
    assert report.breaches[0].startswith("loss 18.00% >= max_loss_pct 10%")
    assert report.action == "reduce" and report.symbol == "BTC" and report.fraction == 0.5
    assert portfolio.positions["BTC"].qty == pytest.approx(30.0)  # half of 60, not 90%
    assert "ETH" in portfolio.positions
    assert [a.name for a in sink.alerts] == ["risk.max_loss", "risk.max_exposure"]
    schema = model.history[0].options["response_format"]["schema"]
    assert schema["properties"]["action"]["enum"] == ["KEEP", "REDUCE"]  # no close-all option


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (ProviderError("risk model down"), "risk model down"),
        ("sell everything now!!!", "the text names none of KEEP, REDUCE"),
        (
            json.dumps({"action": "REDUCE", "symbol": "DOGE", "fraction": 1, "confidence": 1}),
            "REDUCE names 'DOGE', which the portfolio does not hold",
        ),
        (
            json.dumps({"action": "CLOSE_ALL", "confidence": 1}),
            "'CLOSE_ALL' is not one of KEEP, REDUCE",
        ),
    ],
)
def test_any_error_keeps_the_portfolio_and_alerts(
    herd_factory: Any, reply: Any, error: str
) -> None:
    sink = AlertSink()
    herd = herd_factory({"r": mock("r", *[reply] * 3)}, {"risk": {"model": "r"}})
    herd.register_plugin(sink)
    portfolio = losing_portfolio()
    before = portfolio.model_dump()
    report = check(herd, portfolio, {"BTC": 50.0, "ETH": 5.0})
    assert report.action == "keep" and report.model_status == "failed"
    assert report.error == error
    assert portfolio.positions.keys() == before["positions"].keys()
    assert {s: p.qty for s, p in portfolio.positions.items()} == {
        s: p["qty"] for s, p in before["positions"].items()
    }
    failed = [a for a in sink.alerts if a.name == "risk.check_failed"]
    assert len(failed) == 1 and failed[0].state == "firing" and failed[0].severity == "critical"
    assert failed[0].message == (
        f"risk model failed ({error}); portfolio kept as it is — review it by hand"
    )


def test_a_raising_notifier_does_not_change_the_decision(herd_factory: Any) -> None:
    class Broken:
        __name__ = "broken-notifier"

        @hookimpl
        def on_alert(self, alert: Any, herd: Any) -> None:
            raise RuntimeError("smtp down")

    herd = herd_factory(
        {
            "r": mock(
                "r", json.dumps({"action": "KEEP", "symbol": "BTC", "fraction": 0, "confidence": 1})
            )
        },
        {"risk": {"model": "r"}},
    )
    herd.register_plugin(Broken())
    report = check(herd, losing_portfolio(), {"BTC": 50.0, "ETH": 5.0})
    assert report.action == "keep" and report.model_status == "ok"
