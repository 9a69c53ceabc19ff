"""`copybot`: follow a tracked portfolio; for each position ask whether to mirror it.

The tracked positions come from a JSON file (`source`; the bundled sample-fund by
default): {"name": ..., "positions": [{"symbol", "side": "long"|"short", "weight"}]}.
Each position gets the trading agent's decision schema (BUY = mirror, SELL = drop
our mirror, NOTHING) from one model or a swarm, gated the same way (unparseable,
tie or low confidence = NOTHING). A mirrored position is sized by confidence on a
0–1 scale: `max_position_pct` of equity x confidence. Paper trades and a JSONL
journal, like the trading agent; short positions are never mirrored (long only).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import anyio
from modelherd import Agent
from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from pydantic import Field, ValidationError

from . import features, storage
from .caveats import model_note
from .market_data import fetch_candles
from .portfolio import Fill, load_portfolio, trading_round
from .swarm_agent import SwarmAgent, SwarmResult
from .trading_agent import (
    ACTIONS,
    Action,
    DecisionSettings,
    TradeAnswer,
    gate,
    position_prompt,
)

SYSTEM = (
    "You decide whether to copy a position that a tracked fund holds. Answer BUY to "
    "mirror it, SELL to drop our copy, NOTHING to stay out. Prefer NOTHING when unsure."
)


class TrackedPosition(LazyModel):
    symbol: str
    side: Literal["long", "short"] = "long"
    weight: float = Field(default=0.0, ge=0, le=1)


class TrackedPortfolio(LazyModel):
    name: str = "tracked"
    note: str = ""
    positions: list[TrackedPosition]


class CopyBotSettings(DecisionSettings):
    """`[agents.copybot]` in plugins.toml."""

    #: JSON file of the tracked portfolio (default: the bundled sample-fund)
    source: str | None = None
    samples: int = Field(default=1, ge=1, le=64)
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    #: a mirror at confidence 1.0 gets this % of equity; lower confidence, less
    max_position_pct: float = Field(default=20.0, gt=0, le=100)
    portfolio: str = "copybot"


class CopyDecision(LazyModel):
    symbol: str
    tracked_side: str
    tracked_weight: float
    model_action: str | None
    action: Action
    confidence: float | None
    agreement: float
    notional: float = 0.0
    reason: str
    price: float
    votes: dict[str, float]
    members: list[dict[str, Any]]
    fill: Fill | None = None


class CopyReport(LazyModel):
    at: str
    mode: Literal["paper"] = "paper"
    tracked: str
    decisions: list[CopyDecision]
    portfolio: dict[str, Any]
    journal: str
    note: str


def load_tracked(source: str | None) -> TrackedPortfolio:
    if source:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"tracked portfolio file {path} does not exist — check "
                f"[agents.copybot] source or --positions"
            )
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        text = (
            resources.files("modelherd.agents.data")
            .joinpath("tracked_portfolio.json")
            .read_text(encoding="utf-8")
        )
        where = "bundled tracked_portfolio.json"
    try:
        return TrackedPortfolio.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON at line {exc.lineno} — fix the file") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{where}: {key}: {first['msg']} — expected "
            '{"positions": [{"symbol", "side", "weight"}]}'
        ) from None


class CopyBotAgent(Agent):
    name = "copybot"
    description = "mirror a tracked portfolio's positions, sized by model confidence (paper)"
    Settings = CopyBotSettings
    settings: CopyBotSettings

    async def run(self, **kwargs: Any) -> CopyReport:
        s = self.settings
        tracked = load_tracked(kwargs.get("source") or s.source)
        longs = [p for p in tracked.positions if p.side == "long"]
        symbols = [p.symbol.upper() for p in tracked.positions]
        feats = {
            sym: features.compute(
                fetch_candles(self.herd, sym, s.timeframe, s.lookback, {"data_path": s.data_path})
            )
            for sym in symbols
        }
        prices = {sym: float(f["close"]) for sym, f in feats.items()}
        # prompts see the saved state; fills go to the state saved when the round commits
        snapshot = load_portfolio(s.portfolio, s.data_dir, s.initial_cash)
        snapshot.mark(prices)
        snapshot.check_exits(prices)
        swarm = SwarmAgent(self.herd, s.swarm_settings())
        asked: dict[str, SwarmResult] = {}

        async def decide(pos: TrackedPosition) -> None:
            sym = pos.symbol.upper()
            context = (
                f"The tracked fund '{tracked.name}' holds {pos.side} {sym} at "
                f"{pos.weight:.0%} of its portfolio.\n"
                + features.prompt_lines(sym, s.timeframe, feats[sym])
                + "\n"
                + position_prompt(snapshot, sym)
            )
            asked[sym] = await swarm.ask(
                "Should we mirror this position?",
                labels=ACTIONS,
                label_key="action",
                system=SYSTEM,
                context=context,
                save=False,
                agent=self.name,
                output_type=TradeAnswer,
            )

        async with anyio.create_task_group() as tg:
            for pos in longs:
                tg.start_soon(decide, pos)

        journal_path = s.journal_path("copybot")
        decisions: list[CopyDecision] = []
        async with trading_round(s.portfolio, s.data_dir, s.initial_cash, journal_path) as book:
            portfolio = book.portfolio
            portfolio.mark(prices)
            for closed in portfolio.check_exits(prices):
                book.record(
                    {
                        "agent": self.name,
                        "mode": "paper",
                        "kind": "exit",
                        "fill": closed.model_dump(mode="json"),
                    }
                )
            for pos in tracked.positions:
                sym = pos.symbol.upper()
                result = asked.get(sym)
                if result is None:  # short positions: not asked, never mirrored
                    decision = CopyDecision(
                        symbol=sym,
                        tracked_side=pos.side,
                        tracked_weight=pos.weight,
                        model_action=None,
                        action="NOTHING",
                        confidence=None,
                        agreement=0.0,
                        reason="short positions are not mirrored (paper trading goes long only)",
                        price=prices[sym],
                        votes={},
                        members=[],
                    )
                else:
                    action, reason = gate(result, s.min_confidence, s.min_agreement)
                    fill, notional = None, 0.0
                    conf = result.consensus.confidence or 0.0
                    if action == "BUY":
                        if sym in portfolio.positions:
                            reason += "; already mirrored, no order"
                        else:
                            notional = portfolio.equity() * s.max_position_pct / 100 * conf
                            fill = portfolio.buy(
                                sym,
                                notional,
                                prices[sym],
                                reason=reason,
                                stop_loss_pct=s.stop_loss_pct,
                                take_profit_pct=s.take_profit_pct,
                                source=self.name,
                            )
                    elif action == "SELL":
                        fill = portfolio.sell(sym, prices[sym], reason=reason)
                        if fill is None:
                            reason += "; nothing mirrored to sell"
                    decision = CopyDecision(
                        symbol=sym,
                        tracked_side=pos.side,
                        tracked_weight=pos.weight,
                        model_action=result.consensus.label,
                        action=action,
                        confidence=result.consensus.confidence,
                        agreement=result.consensus.agreement,
                        notional=round(notional if fill else 0.0, 2),
                        reason=reason,
                        price=prices[sym],
                        votes=result.votes,
                        fill=fill,
                        members=[
                            m.model_dump(
                                include={
                                    "name",
                                    "status",
                                    "label",
                                    "confidence",
                                    "latency_s",
                                    "error",
                                }
                            )
                            for m in result.members
                        ],
                    )
                decisions.append(decision)
                book.record(
                    {
                        "agent": self.name,
                        "mode": "paper",
                        "tracked": tracked.name,
                        **decision.model_dump(mode="json"),
                    }
                )
        return CopyReport(
            at=storage.utc_now(),
            tracked=tracked.name,
            decisions=decisions,
            portfolio=portfolio.summary(),
            journal=str(journal_path),
            note=model_note(self.herd, list(s.models)),
        )
