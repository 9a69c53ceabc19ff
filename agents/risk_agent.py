"""`risk`: watch a paper portfolio against limits; ask a model only when one is hit.

Limits: max loss (equity below its starting value) and max exposure (value in
positions against equity). Within limits nothing is asked and nothing changes.
When a limit is hit the model may choose KEEP or REDUCE one position by at most
`max_reduce_fraction` — there is no "close everything" answer to give. On any error
(model down, timeout, unparseable or impossible answer) the portfolio is kept as it
is and an alert is raised through `on_alert`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Literal

import anyio
from modelherd import Agent, AgentSettings
from modelherd.errors import HerdError
from modelherd.lazy_model import LazyModel
from pydantic import Field

from . import storage
from .answers import ParseError, parse_answer
from .caveats import model_note
from .portfolio import Portfolio, trading_round

RISK_LABELS = ["KEEP", "REDUCE"]


class RiskSettings(AgentSettings):
    """`[agents.risk]` in plugins.toml."""

    model: str = "local"
    portfolio: str = "paper"
    #: a loss of this many % of the starting equity is a breach
    max_loss_pct: float = Field(default=10.0, gt=0)
    #: value in positions above this % of equity is a breach
    max_exposure_pct: float = Field(default=80.0, gt=0)
    #: the most a single check may sell of one position
    max_reduce_fraction: float = Field(default=0.5, gt=0, le=1)
    timeout: float = Field(default=60.0, gt=0)
    max_tokens: int = Field(default=96, ge=1)
    data_dir: str | None = None


class RiskAlert(LazyModel):
    """What `on_alert` receives (notifiers read `state`, `name`, `severity`, `message`)."""

    name: str
    state: Literal["firing", "resolved"] = "firing"
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str
    portfolio: str
    value: float | None = None
    threshold: float | None = None
    at: str = Field(default_factory=storage.utc_now)


class RiskReport(LazyModel):
    portfolio: str
    equity: float
    loss_pct: float
    exposure_pct: float
    breaches: list[str] = Field(default_factory=list)
    #: none = within limits (no model asked); keep / reduce = what was done
    action: Literal["none", "keep", "reduce"] = "none"
    symbol: str | None = None
    fraction: float | None = None
    model_status: str = "not asked"
    reasoning: str = ""
    error: str | None = None
    alerts: list[RiskAlert] = Field(default_factory=list)
    note: str = ""


def _risk_schema(symbols: list[str], max_fraction: float) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": RISK_LABELS},
            "symbol": {"type": "string", "enum": symbols},
            "fraction": {"type": "number", "minimum": 0, "maximum": max_fraction},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "reasoning": {"type": "string", "maxLength": 200},
        },
        "required": ["action", "symbol", "fraction", "confidence", "reasoning"],
    }


class RiskAgent(Agent):
    name = "risk"
    description = "watch the paper portfolio's loss and exposure; never closes everything"
    Settings = RiskSettings
    settings: RiskSettings

    def _alert(self, report: RiskReport, alert: RiskAlert) -> None:
        report.alerts.append(alert)
        # a broken notifier must not change the risk decision
        with contextlib.suppress(Exception):
            self.herd.hook.on_alert(alert=alert, herd=self.herd)

    async def run(self, **kwargs: Any) -> RiskReport:
        """Check the saved portfolio (`portfolio=` name) at its last marks, or `prices=`."""
        s = self.settings
        name = kwargs.get("portfolio") or s.portfolio
        # under the portfolio's lock: a reduction commits against the latest saved state
        async with trading_round(name, s.data_dir) as book:
            report = await self.check(book.portfolio, kwargs.get("prices") or {})
            if report.action != "reduce":
                book.discard()  # nothing changed: write nothing
        return report

    async def check(self, portfolio: Portfolio, prices: dict[str, float]) -> RiskReport:
        """Check limits; when one is hit, ask the model and apply a bounded reduction."""
        s = self.settings
        portfolio.mark(prices)
        equity = portfolio.equity()
        loss_pct = max(-portfolio.pnl_pct(), 0.0)
        exposure_pct = portfolio.exposure() / equity * 100.0 if equity > 0 else 0.0
        report = RiskReport(
            portfolio=portfolio.name,
            equity=round(equity, 2),
            loss_pct=round(loss_pct, 3),
            exposure_pct=round(exposure_pct, 3),
            note=model_note(self.herd, [s.model]),
        )
        if loss_pct >= s.max_loss_pct:
            report.breaches.append(f"loss {loss_pct:.2f}% >= max_loss_pct {s.max_loss_pct:g}%")
            self._alert(
                report,
                RiskAlert(
                    name="risk.max_loss",
                    severity="critical",
                    message=report.breaches[-1],
                    portfolio=portfolio.name,
                    value=loss_pct,
                    threshold=s.max_loss_pct,
                ),
            )
        if exposure_pct >= s.max_exposure_pct:
            report.breaches.append(
                f"exposure {exposure_pct:.2f}% >= max_exposure_pct {s.max_exposure_pct:g}%"
            )
            self._alert(
                report,
                RiskAlert(
                    name="risk.max_exposure",
                    message=report.breaches[-1],
                    portfolio=portfolio.name,
                    value=exposure_pct,
                    threshold=s.max_exposure_pct,
                ),
            )
        if not report.breaches or not portfolio.positions:
            return report
        try:
            symbol, fraction, reasoning = await self._ask(portfolio, report)
        except Exception as exc:  # whatever went wrong: keep the portfolio, say so loudly
            report.action = "keep"
            message = exc.message if isinstance(exc, HerdError) else str(exc)
            report.error = message or type(exc).__name__
            report.model_status = "failed"
            self._alert(
                report,
                RiskAlert(
                    name="risk.check_failed",
                    severity="critical",
                    portfolio=portfolio.name,
                    message=f"risk model failed ({report.error}); portfolio kept as it is — "
                    f"review it by hand",
                ),
            )
            return report
        report.model_status = "ok"
        report.reasoning = reasoning
        if symbol is None:
            report.action = "keep"
            return report
        price = portfolio.marks.get(symbol, portfolio.positions[symbol].entry_price)
        portfolio.sell(
            symbol, price, reason=f"risk: {'; '.join(report.breaches)}", fraction=fraction
        )
        report.action, report.symbol, report.fraction = "reduce", symbol, round(fraction, 4)
        return report

    async def _ask(self, portfolio: Portfolio, report: RiskReport) -> tuple[str | None, float, str]:
        s = self.settings
        symbols = sorted(portfolio.positions)
        state = json.dumps(portfolio.summary(), separators=(",", ":"))
        messages = [
            {"role": "system", "content": "You are a cautious risk manager for a paper portfolio."},
            {
                "role": "user",
                "content": (
                    f"Portfolio: {state}\nLimits breached: {'; '.join(report.breaches)}\n"
                    f"Choose KEEP, or REDUCE one position (symbol) by a fraction up to "
                    f'{s.max_reduce_fraction:g}. Reply with JSON only: {{"action": "KEEP" | '
                    f'"REDUCE", "symbol": one of {symbols}, "fraction": <0..1>, '
                    f'"confidence": <0..1>, "reasoning": "<one sentence>"}}'
                ),
            },
        ]
        options: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": 0.0}
        try:
            if self.herd.get_model(s.model).supports_schema:
                schema = _risk_schema(symbols, s.max_reduce_fraction)
                options["response_format"] = {"type": "json_schema", "schema": schema}
        except HerdError:
            pass
        with anyio.fail_after(s.timeout):
            response = await self.herd.chat(
                s.model, messages, agent=self.name, timeout=s.timeout, **options
            )
        parsed = parse_answer(response.content, RISK_LABELS, ("action",))
        if parsed.label == "KEEP":
            return None, 0.0, parsed.reasoning
        symbol = str(parsed.extra.get("symbol", "")).upper()
        if symbol not in portfolio.positions:
            raise ParseError(f"REDUCE names '{symbol}', which the portfolio does not hold")
        try:
            fraction = float(parsed.extra.get("fraction", 0))
        except (TypeError, ValueError):
            raise ParseError("REDUCE has no numeric fraction") from None
        if not 0 < fraction <= 1:
            raise ParseError(f"REDUCE fraction {fraction} is outside (0, 1]")
        return symbol, min(fraction, s.max_reduce_fraction), parsed.reasoning
