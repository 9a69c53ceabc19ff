"""One end-to-end run per agent on the embedded SmolLM2-135M (real llama.cpp inference).

These prove the plumbing (schema-constrained answers, votes, journals, sandbox) on a
model with no judgment: they assert shapes and invariants, never that a decision is good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from modelherd import Herd
from modelherd.agents import copybot, market_data, rbi, risk, swarm, trading
from modelherd.agents.portfolio import Portfolio
from modelherd.config import HerdConfig, builtin_defaults
from modelherd.plugins.providers import llamacpp

pytestmark = pytest.mark.llama


_RUNNER = asyncio.Runner()  # one loop for the module, so the model loads once


@pytest.fixture(scope="module")
def herd() -> Iterator[Herd]:
    config = HerdConfig.model_validate(builtin_defaults())  # never a plugins.toml lying around
    spec = config.spec("local")
    avail = llamacpp.LlamaCppModel.availability(spec, {})
    if not avail.ok:
        pytest.skip(f"embedded model unavailable: {avail.reason}")
    h = Herd(
        config,
        env={},
        load_entry_points=False,
        plugins=(llamacpp, market_data, swarm, trading, rbi, copybot, risk),
    )
    yield h
    _RUNNER.run(h.aclose())
    _RUNNER.close()


def run(herd: Herd, coro: Any) -> Any:
    return _RUNNER.run(coro)


def test_swarm_self_consistency(herd: Herd) -> None:
    agent = herd.agent("swarm", members=["local"], samples=3, max_tokens=48)
    result = run(herd, agent.ask("Is water wet? Answer YES or NO.", labels=["YES", "NO"]))
    finished = [m for m in result.members if m.status != "cancelled"]
    assert len(finished) >= 2
    # the grammar makes every finished answer parse: each is a vote
    assert all(m.status == "ok" and m.label in ("YES", "NO") for m in finished), finished
    assert sorted({m.seed for m in result.members}) == [1, 2, 3]
    assert result.consensus.label in ("YES", "NO", None)
    assert "SmolLM2-135M, a pipeline demo with no market judgment" in result.note
    assert Path(result.path or "").is_file()


def test_trading_once(herd: Herd) -> None:
    agent = herd.agent("trading", samples=1, max_tokens=48)
    report = run(herd, agent.run(symbols=["BTC"]))
    decision = report.decisions[0]
    assert decision.action in ("BUY", "SELL", "NOTHING")
    if decision.action == "BUY":
        assert decision.confidence is not None and decision.confidence >= 0.6
    assert decision.members[0]["status"] == "ok"
    assert Path(report.journal).read_text().count("\n") == 1
    assert "not advice" in report.note


def test_copybot(herd: Herd) -> None:
    agent = herd.agent("copybot", max_tokens=48)
    report = run(herd, agent.run())
    assert [d.symbol for d in report.decisions] == ["BTC", "ETH", "SOL"]
    assert all(d.action in ("BUY", "SELL", "NOTHING") for d in report.decisions)


def test_risk_breach_never_empties_the_portfolio(herd: Herd) -> None:
    portfolio = Portfolio(name="paper")
    portfolio.buy("BTC", 6000, 100.0, reason="t")
    portfolio.buy("ETH", 3000, 10.0, reason="t")
    agent = herd.agent("risk", max_tokens=64)
    report = run(herd, agent.check(portfolio, {"BTC": 50.0, "ETH": 5.0}))
    assert report.breaches and report.action in ("keep", "reduce")
    assert set(portfolio.positions) == {"BTC", "ETH"}  # at most half of one position sold


def test_rbi_rounds_are_recorded(herd: Herd) -> None:
    pytest.importorskip("backtesting", reason='needs: pip install "modelherd[rbi]"')
    agent = herd.agent("rbi", max_rounds=0, spec_max_tokens=64, code_max_tokens=128, timeout_s=30)
    result = run(herd, agent.run(idea="Buy when the close crosses above its 20-day average"))
    assert result.status in ("ok", "failed")
    assert len(result.rounds) == 1 and result.rounds[0].step == "code"
    assert Path(result.folder, "result.json").is_file()
    if result.status == "failed":
        assert result.reason  # says why, never a silent failure


def test_stragglers_on_the_embedded_model_really_stop(herd: Herd) -> None:
    """quorum = 1: the first answer settles it; the four queued or running calls must
    return at once (the engine stops them at the next token), not run to the end."""
    agent = herd.agent("swarm", members=["local"], samples=5, max_tokens=64, quorum=1, save=False)
    result = run(herd, agent.ask("Is fire hot?", labels=["YES", "NO"]))
    statuses = sorted(m.status for m in result.members)
    assert statuses == ["cancelled"] * 4 + ["ok"]
    first = next(m for m in result.members if m.status == "ok")
    assert first.latency_s is not None
    assert result.elapsed_s < first.latency_s + 1.0


def test_a_cancelled_generation_frees_the_model_at_once(herd: Herd) -> None:
    """Cancelling a caller stops llama.cpp between tokens: the engine is idle again long
    before a 256-token generation could have finished."""

    async def go() -> float:
        with anyio.move_on_after(0.4):
            await herd.chat(
                "local",
                "Write a very long story about the sea.",
                max_tokens=256,
                cache="no-store",
                seed=11,
            )
        engine = herd.get_model("local").loaded
        assert engine is not None
        started = time.perf_counter()
        while engine.busy():
            await anyio.sleep(0.01)
        return time.perf_counter() - started

    assert run(herd, go()) < 5.0
