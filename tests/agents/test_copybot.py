"""CopyBot: mirror a tracked portfolio, sized by confidence; never mirror a short."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_helpers import answer, mock
from modelherd.errors import ConfigError


def copy(herd: Any, **kwargs: Any) -> Any:
    agent = herd.agent("copybot")
    return anyio.run(lambda: agent.run(**kwargs))


def by_symbol(answers: dict[str, str]) -> Any:
    def pick(request: Any) -> str:
        prompt = request.messages[-1].content
        return next(text for sym, text in answers.items() if f" {sym} at " in prompt)

    return pick


def test_mirrors_sized_by_confidence(herd_factory: Any) -> None:
    model = mock(
        "a",
        *[by_symbol({"BTC": answer("BUY", 0.8, "action"), "ETH": answer("BUY", 0.3, "action")})]
        * 2,
    )
    herd = herd_factory({"a": model}, {"copybot": {"models": ["a"]}})
    report = copy(herd)
    assert report.tracked == "sample-fund"
    btc, eth, sol = report.decisions
    assert btc.action == "BUY" and btc.notional == pytest.approx(10_000 * 0.20 * 0.8)
    assert btc.fill is not None and btc.fill.qty * btc.price == pytest.approx(1600)
    assert eth.action == "NOTHING" and eth.reason.startswith("BUY confidence 0.30 < min_confidence")
    assert sol.tracked_side == "short" and sol.action == "NOTHING" and sol.members == []
    assert len(model.history) == 2  # the short position was never asked about
    lines = Path(report.journal).read_text().splitlines()
    assert [json.loads(x)["symbol"] for x in lines] == ["BTC", "ETH", "SOL"]
    assert report.note.startswith("model: a (")


def test_tracked_file_errors_are_one_line(herd_factory: Any, tmp_path: Path) -> None:
    herd = herd_factory({"a": mock("a")}, {"copybot": {"models": ["a"]}})
    with pytest.raises(
        ConfigError,
        match=r"tracked portfolio file .*nope.json does not exist — "
        r"check \[agents.copybot\] source or --positions",
    ):
        copy(herd, source=str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"positions": [{"symbol": "BTC", "side": "sideways"}]}')
    with pytest.raises(
        ConfigError,
        match=r"bad.json: positions.0.side: Input should be 'long' "
        r"or 'short' — expected",
    ):
        copy(herd, source=str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  positions: }")
    with pytest.raises(ConfigError, match=r"broken.json: invalid JSON at line 2 — fix the file"):
        copy(herd, source=str(broken))
