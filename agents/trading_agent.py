"""`trading`: market data -> compact features -> BUY / SELL / NOTHING -> paper trade.

One model or a swarm decides (the swarm agent does the fan-out and the vote). The
decision is NOTHING — never BUY — when the answer cannot be parsed, the vote is a
tie, or the confidence or agreement is below the thresholds. Every decision, with
its inputs, models, votes and latency, is appended to a JSONL journal. Trades are
paper trades; live orders need an execution plugin and `--live`, and none ships.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import anyio
from modelherd import Agent, AgentSettings
from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field

from . import features, storage
from .caveats import model_note
from .market_data import fetch_candles
from .portfolio import Fill, Portfolio, load_portfolio, portfolio_path, trading_round
from .risk_agent import RiskAgent, RiskReport
from .swarm_agent import SwarmAgent, SwarmResult

ACTIONS = ["BUY", "SELL", "NOTHING"]
Action = Literal["BUY", "SELL", "NOTHING"]

SYSTEM = (
    "You are a cautious trading assistant. Given compact market features for one "
    "symbol, decide BUY, SELL or NOTHING. Prefer NOTHING when unsure."
)


class DecisionSettings(AgentSettings):
    """What an agent that asks models BUY / SELL / NOTHING and paper trades is configured
    with (trading, copybot): who decides, the guards, exits, the portfolio and the data."""

    timeframe: str = "1d"
    #: candles fetched per symbol (features need ~30)
    lookback: int = Field(default=60, ge=10)
    #: model aliases that decide (one = single model; several = a swarm)
    models: list[str] = Field(default_factory=lambda: ["local"])
    #: answers per alias (more than 1 = self-consistency with different seeds)
    samples: int = Field(default=3, ge=1, le=64)
    strategy: Literal["vote", "weighted", "judge"] = "vote"
    judge: str | None = None
    #: below this confidence the decision is NOTHING
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    #: below this share of valid votes for the winner the decision is NOTHING
    min_agreement: float = Field(default=0.5, ge=0, le=1)
    stop_loss_pct: float | None = Field(default=5.0, gt=0)
    take_profit_pct: float | None = Field(default=10.0, gt=0)
    portfolio: str = "paper"
    initial_cash: float = Field(default=10_000.0, gt=0)
    member_timeout: float = Field(default=60.0, gt=0)
    deadline: float = Field(default=180.0, gt=0)
    temperature: float = Field(default=0.8, ge=0)
    max_tokens: int = Field(default=96, ge=1)
    seed: int = 1
    #: folder with <SYMBOL>_<timeframe>.csv files (else the bundled samples)
    data_path: str | None = None
    data_dir: str | None = None
    #: JSONL journal path (default: <data dir>/journal/<agent>.jsonl)
    journal: str | None = None

    def swarm_settings(self) -> dict[str, Any]:
        """The swarm agent's settings for these deciders (results are not saved)."""
        return {
            "members": self.models,
            "samples": self.samples,
            "strategy": self.strategy,
            "judge": self.judge,
            "member_timeout": self.member_timeout,
            "deadline": self.deadline,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "save": False,
            "data_dir": self.data_dir,
        }

    def journal_path(self, agent: str) -> Path:
        if self.journal:
            return Path(self.journal).expanduser()
        return storage.data_dir(self.data_dir) / "journal" / f"{agent}.jsonl"


class TradingSettings(DecisionSettings):
    """`[agents.trading]` in plugins.toml."""

    symbols: list[str] = Field(default_factory=lambda: ["BTC", "ETH"])
    #: % of equity put into one BUY
    position_pct: float = Field(default=10.0, gt=0, le=100)
    #: BUY again when already holding (averaging in)
    allow_add: bool = False
    #: run the risk agent ([agents.risk]) after each round
    risk: bool = True


class TradeAnswer(LazyModel):
    """One model's decision as it must answer it: sent as the swarm members'
    `output_type` (native structured output), each answer validated before it votes.
    Confidence may come back null (the gate then says "came without a confidence");
    the schema still asks for all three fields."""

    model_config = ConfigDict(json_schema_extra={"required": ["action", "confidence", "reasoning"]})

    action: Action
    confidence: float | None = Field(default=None, ge=0, le=1)
    # bounded so a chatty model cannot run out of tokens mid-JSON
    reasoning: str = Field(default="", max_length=160)


class Decision(LazyModel):
    symbol: str
    #: what the models said (None = no consensus)
    model_action: str | None
    #: what the agent decided after the guards
    action: Action
    confidence: float | None
    agreement: float
    reason: str
    price: float
    features: dict[str, Any]
    votes: dict[str, float]
    members: list[dict[str, Any]]
    decided_by: str
    latency_s: float
    fill: Fill | None = None


class TradingReport(LazyModel):
    at: str
    mode: Literal["paper"] = "paper"
    timeframe: str
    decisions: list[Decision]
    exits: list[Fill]
    portfolio: dict[str, Any]
    risk: RiskReport | None = None
    journal: str
    portfolio_path: str
    note: str


def gate(result: SwarmResult, min_confidence: float, min_agreement: float) -> tuple[Action, str]:
    """The consensus turned into an action: anything doubtful is NOTHING."""
    c = result.consensus
    if c.label is None:
        return "NOTHING", c.reason or "no consensus"
    if c.label not in ACTIONS:
        return "NOTHING", f"'{c.label}' is not an action"
    if c.label == "NOTHING":
        return "NOTHING", "the models chose NOTHING"
    if c.confidence is None:
        return "NOTHING", f"{c.label} came without a confidence"
    if c.confidence < min_confidence:
        return "NOTHING", (
            f"{c.label} confidence {c.confidence:.2f} < min_confidence {min_confidence:g}"
        )
    if c.agreement < min_agreement:
        return "NOTHING", f"{c.label} agreement {c.agreement:.2f} < min_agreement {min_agreement:g}"
    return c.label, f"{c.label} with confidence {c.confidence:.2f}"  # type: ignore[return-value]


def position_prompt(portfolio: Portfolio, symbol: str) -> str:
    pos = portfolio.positions.get(symbol)
    if pos is None:
        return "Position: none"
    return f"Position: long {pos.qty:.6g} at {pos.entry_price:.6g}"


class TradingAgent(Agent):
    name = "trading"
    description = "features -> BUY/SELL/NOTHING by one model or a swarm -> paper trades + journal"
    Settings = TradingSettings
    settings: TradingSettings

    def swarm(self) -> SwarmAgent:
        s = self.settings
        return SwarmAgent(
            self.herd,
            {
                **s.swarm_settings(),
                "labels": ACTIONS,
                # under min_agreement no early stop could change a BUY into NOTHING, so wait
                "early_stop": True,
            },
        )

    async def run(self, **kwargs: Any) -> TradingReport:
        """One round over `symbols=` (default: the settings')."""
        symbols = kwargs.get("symbols") or self.settings.symbols
        if kwargs.get("live"):
            raise ConfigError(
                "live trading needs an execution plugin, and none is installed (modelherd "
                "ships none) — run without --live for paper trading"
            )
        return await self.round([str(s).upper() for s in symbols])

    async def round(self, symbols: list[str]) -> TradingReport:
        s = self.settings
        if not symbols:
            raise ConfigError(
                "no symbols to trade — pass --symbols BTC,ETH or set [agents.trading] symbols"
            )
        market = {
            sym: fetch_candles(self.herd, sym, s.timeframe, s.lookback, {"data_path": s.data_path})
            for sym in symbols
        }
        feats = {sym: features.compute(c) for sym, c in market.items()}
        prices = {sym: float(f["close"]) for sym, f in feats.items()}
        # the prompts see the saved state; the fills are applied below to the state saved
        # when the round commits (another agent may have traded meanwhile)
        snapshot = load_portfolio(s.portfolio, s.data_dir, s.initial_cash)
        snapshot.mark(prices)
        snapshot.check_exits(prices)
        swarm = self.swarm()
        asked: dict[str, tuple[SwarmResult, float]] = {}

        async def decide(sym: str) -> None:
            t0 = time.perf_counter()
            context = (
                features.prompt_lines(sym, s.timeframe, feats[sym])
                + "\n"
                + position_prompt(snapshot, sym)
            )
            result = await swarm.ask(
                "Decide BUY, SELL or NOTHING for this symbol.",
                labels=ACTIONS,
                label_key="action",
                system=SYSTEM,
                context=context,
                save=False,
                agent=self.name,
                output_type=TradeAnswer,
            )
            asked[sym] = (result, time.perf_counter() - t0)

        async with anyio.create_task_group() as tg:
            for sym in symbols:
                tg.start_soon(decide, sym)

        journal_path = s.journal_path("trading")
        decisions: list[Decision] = []
        risk_report = None
        async with trading_round(s.portfolio, s.data_dir, s.initial_cash, journal_path) as book:
            portfolio = book.portfolio
            portfolio.mark(prices)
            exits = portfolio.check_exits(prices)
            for closed in exits:  # every fill of the portfolio has its journal line
                book.record(
                    {
                        "agent": self.name,
                        "mode": "paper",
                        "kind": "exit",
                        "fill": closed.model_dump(mode="json"),
                    }
                )
            for sym in symbols:  # apply in a fixed order: concurrency never reorders trades
                result, latency = asked[sym]
                action, reason = gate(result, s.min_confidence, s.min_agreement)
                fill = None
                if action == "BUY":
                    if sym in portfolio.positions and not s.allow_add:
                        reason += "; already holding (allow_add = false), no order"
                    else:
                        notional = portfolio.equity() * s.position_pct / 100
                        fill = portfolio.buy(
                            sym,
                            notional,
                            prices[sym],
                            reason=reason,
                            stop_loss_pct=s.stop_loss_pct,
                            take_profit_pct=s.take_profit_pct,
                            source=self.name,
                        )
                        if fill is None:
                            reason += "; no cash left, no order"
                elif action == "SELL":
                    fill = portfolio.sell(sym, prices[sym], reason=reason)
                    if fill is None:
                        reason += "; no position to sell (paper trading goes long only)"
                decision = Decision(
                    symbol=sym,
                    model_action=result.consensus.label,
                    action=action,
                    confidence=result.consensus.confidence,
                    agreement=result.consensus.agreement,
                    reason=reason,
                    price=prices[sym],
                    features=feats[sym],
                    votes=result.votes,
                    members=[
                        m.model_dump(
                            include={
                                "name",
                                "alias",
                                "seed",
                                "status",
                                "label",
                                "confidence",
                                "latency_s",
                                "output_tokens",
                                "error",
                            }
                        )
                        for m in result.members
                    ],
                    decided_by=result.consensus.decided_by,
                    latency_s=round(latency, 4),
                    fill=fill,
                )
                decisions.append(decision)
                book.record(
                    {"agent": self.name, "mode": "paper", **decision.model_dump(mode="json")}
                )
            if s.risk:
                # limits come from [agents.risk]; it checks this round's portfolio in memory,
                # inside the round, so a reduction it makes commits with the round's fills
                before = len(portfolio.fills)
                risk_report = await RiskAgent(self.herd).check(portfolio, prices)
                for reduced in portfolio.fills[before:]:
                    book.record(
                        {
                            "agent": "risk",
                            "mode": "paper",
                            "kind": "risk",
                            "fill": reduced.model_dump(mode="json"),
                        }
                    )
        path = portfolio_path(s.portfolio, s.data_dir)
        aliases = list(s.models) + ([s.judge] if s.judge else [])
        return TradingReport(
            at=storage.utc_now(),
            timeframe=s.timeframe,
            decisions=decisions,
            exits=exits,
            portfolio=portfolio.summary(),
            risk=risk_report,
            journal=str(journal_path),
            portfolio_path=str(path),
            note=model_note(self.herd, aliases),
        )
