"""Trading agent with scripted models: the guards that keep doubtful answers from BUYing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_helpers import answer, mock
from modelherd.agents.portfolio import load_portfolio, save_portfolio
from modelherd.errors import ConfigError


def per_symbol(answers: dict[str, str]) -> Any:
    """A scripted answer chosen by the symbol named in the prompt."""

    def pick(request: Any) -> str:
        prompt = request.messages[-1].content
        return next(text for sym, text in answers.items() if prompt.startswith(sym))

    return pick


def trade(herd: Any, symbols: list[str], **settings: Any) -> Any:
    agent = herd.agent("trading", **settings)
    return anyio.run(lambda: agent.run(symbols=symbols))


def test_buy_journal_and_portfolio(herd_factory: Any, _data_dir: Path) -> None:
    model = mock(
        "a",
        *[
            per_symbol(
                {"BTC": answer("BUY", 0.9, "action"), "ETH": answer("NOTHING", 0.9, "action")}
            )
        ]
        * 2,
    )
    herd = herd_factory({"a": model}, {"trading": {"models": ["a"], "samples": 1}})
    report = trade(herd, ["BTC", "ETH"])
    btc, eth = report.decisions
    assert (btc.action, eth.action) == ("BUY", "NOTHING")
    assert btc.fill is not None and btc.fill.side == "buy"
    assert btc.fill.qty * btc.price == pytest.approx(1000.0)  # 10% of 10,000
    assert eth.reason == "the models chose NOTHING"
    # the prompt is compact features, and the schema is the decision schema
    request = model.history[0]
    assert "rsi14:" in request.messages[-1].content
    schema = request.options["response_format"]["schema"]
    assert schema["properties"]["action"]["enum"] == ["BUY", "SELL", "NOTHING"]
    lines = [json.loads(x) for x in Path(report.journal).read_text().splitlines()]
    assert [x["symbol"] for x in lines] == ["BTC", "ETH"]
    assert lines[0]["features"]["close"] == btc.price and lines[0]["votes"] == {"BUY": 1.0}
    assert lines[0]["members"][0]["alias"] == "a" and lines[0]["latency_s"] >= 0
    saved = load_portfolio("paper")
    assert "BTC" in saved.positions and saved.positions["BTC"].stop_loss is not None
    assert Path(report.portfolio_path).is_relative_to(_data_dir)


@pytest.mark.parametrize(
    ("answers", "why"),
    [
        (["I think BUY or SELL"], "no valid answers"),
        (["not json, no label"], "no valid answers"),
        ([answer("BUY", 0.3, "action")], "BUY confidence 0.30 < min_confidence 0.6"),
        ([json.dumps({"action": "BUY"})], "BUY came without a confidence"),
        ([answer("BUY", 0.9, "action"), answer("SELL", 0.9, "action")], "tie between BUY, SELL"),
        ([RuntimeError("down")], "no valid answers"),
    ],
)
def test_never_buys_on_doubt(herd_factory: Any, answers: list[Any], why: str) -> None:
    models = {f"m{i}": mock(f"m{i}", text) for i, text in enumerate(answers)}
    herd = herd_factory(models, {"trading": {"models": list(models), "samples": 1}})
    report = trade(herd, ["BTC"])
    decision = report.decisions[0]
    assert decision.action == "NOTHING"
    assert decision.reason == why
    assert decision.fill is None and report.portfolio["positions"] == {}


def test_low_agreement_is_nothing(herd_factory: Any) -> None:
    models = {
        "a": mock("a", answer("BUY", 0.9, "action")),
        "b": mock("b", answer("NOTHING", 0.9, "action")),
        "c": mock("c", answer("BUY", 0.9, "action")),
        "d": mock("d", answer("SELL", 0.9, "action")),
    }
    herd = herd_factory(
        models, {"trading": {"models": list(models), "samples": 1, "min_agreement": 0.75}}
    )
    decision = trade(herd, ["BTC"]).decisions[0]
    assert decision.model_action == "BUY" and decision.action == "NOTHING"
    assert decision.reason == "BUY agreement 0.50 < min_agreement 0.75"


def test_sell_closes_and_stop_loss_exits(herd_factory: Any) -> None:
    portfolio = load_portfolio("paper")
    portfolio.buy("BTC", 1000, 1.0, reason="seed")  # bought at 1.0: far below today's price
    portfolio.buy("ETH", 1000, 1e9, reason="seed", stop_loss_pct=5)  # stop far above
    save_portfolio(portfolio)
    model = mock(
        "a",
        *[
            per_symbol(
                {"BTC": answer("SELL", 0.9, "action"), "ETH": answer("NOTHING", 0.9, "action")}
            )
        ]
        * 2,
    )
    herd = herd_factory({"a": model}, {"trading": {"models": ["a"], "samples": 1, "risk": False}})
    report = trade(herd, ["BTC", "ETH"])
    assert [f.symbol for f in report.exits] == ["ETH"]
    assert report.exits[0].reason.startswith("stop-loss at ")
    btc = report.decisions[0]
    assert btc.action == "SELL" and btc.fill is not None and btc.fill.pnl > 0
    assert report.portfolio["positions"] == {}


def test_sell_without_position_places_no_order(herd_factory: Any) -> None:
    herd = herd_factory(
        {"a": mock("a", answer("SELL", 0.9, "action"))},
        {"trading": {"models": ["a"], "samples": 1}},
    )
    decision = trade(herd, ["SOL"]).decisions[0]
    assert decision.action == "SELL" and decision.fill is None
    assert decision.reason.endswith("no position to sell (paper trading goes long only)")


def test_live_is_refused_without_an_execution_plugin(herd_factory: Any) -> None:
    herd = herd_factory({"a": mock("a")}, {"trading": {"models": ["a"]}})
    agent = herd.agent("trading")
    with pytest.raises(
        ConfigError,
        match=r"live trading needs an execution plugin, and none is "
        r"installed .* run without --live for paper trading",
    ):
        anyio.run(lambda: agent.run(symbols=["BTC"], live=True))


def test_unknown_symbol_says_what_exists(herd_factory: Any) -> None:
    herd = herd_factory({"a": mock("a")}, {"trading": {"models": ["a"]}})
    with pytest.raises(
        ConfigError,
        match=r"no market data for 'DOGE' \(1d\) — bundled sample "
        r"symbols for 1d: BTC, ETH, SOL; or set data_path",
    ):
        trade(herd, ["DOGE"])


def test_user_csv_folder_wins_over_samples(herd_factory: Any, tmp_path: Path) -> None:
    rows = "\n".join(
        f"2026-01-{d:02d}T00:00:00Z,{d},{d + 1},{d - 0.5},{d + 0.5},100" for d in range(1, 31)
    )
    (tmp_path / "ABC_1d.csv").write_text("time,open,high,low,close,volume\n" + rows + "\n")
    herd = herd_factory(
        {"a": mock("a", answer("NOTHING", 0.9, "action"))},
        {"trading": {"models": ["a"], "samples": 1, "data_path": str(tmp_path)}},
    )
    decision = trade(herd, ["ABC"]).decisions[0]
    assert decision.price == 30.5 and decision.features["trend"] == "up"
    (tmp_path / "BAD_1d.csv").write_text("time,open,high,low,close,volume\nx,1,2,3,oops,5\n")
    with pytest.raises(ConfigError, match="line 2 has a non-numeric price or volume — fix it"):
        trade(herd, ["BAD"])


def test_a_market_data_plugin_wins_over_the_bundled_sample(herd_factory: Any) -> None:
    from modelherd import hookimpl

    class FlatFeed:
        """A third-party source: a flat market for 'XYZ', nothing for other symbols."""

        __name__ = "flat-feed"
        asked: list[tuple[str, str, int]] = []

        @hookimpl
        def provide_market_data(
            self, symbol: str, timeframe: str, limit: int, settings: dict[str, Any]
        ) -> list[dict[str, float]] | None:
            self.asked.append((symbol, timeframe, limit))
            if symbol != "XYZ":
                return None
            return [
                {
                    "time": 1_700_000_000 + 86_400 * i,
                    "open": 10.0,
                    "high": 10.0,
                    "low": 10.0,
                    "close": 10.0,
                    "volume": 100.0,
                }
                for i in range(limit)
            ]

    model = mock("a", answer("NOTHING", 0.9, "action"), answer("NOTHING", 0.9, "action"))
    herd = herd_factory({"a": model}, {"trading": {"models": ["a"], "samples": 1}})
    feed = FlatFeed()
    herd.register_plugin(feed)
    report = trade(herd, ["XYZ", "BTC"])
    xyz, btc = report.decisions
    assert xyz.price == 10.0  # served by the plugin
    assert btc.price != 10.0  # the plugin returned None: the bundled sample answered
    assert [a[0] for a in feed.asked] == ["XYZ", "BTC"]


def test_decisions_are_typed_outputs_and_answers_outside_the_schema_never_vote(
    herd_factory: Any,
) -> None:
    # "HOLD" is no action and 1.7 is no confidence: the kernel's output_type check
    # refuses both before they can vote; the third member's valid answer decides
    models = {
        "a": mock("a", answer("HOLD", 0.9, "action")),
        "b": mock("b", answer("BUY", 1.7, "action")),
        "c": mock("c", answer("SELL", 0.9, "action")),
    }
    herd = herd_factory(models, {"trading": {"models": list(models), "samples": 1}})
    decision = trade(herd, ["BTC"]).decisions[0]
    fmt = models["a"].history[0].options["response_format"]
    assert fmt["name"] == "TradeAnswer"
    assert fmt["schema"]["required"] == ["action", "confidence", "reasoning"]
    assert decision.votes == {"SELL": 1.0}
    errors = {m["alias"]: m["error"] for m in decision.members}
    assert "does not fit TradeAnswer" in errors["a"] and "action: Input should be" in errors["a"]
    assert "confidence: Input should be less than or equal to 1" in errors["b"]
