"""Backtest statistics computed by herd, outside the untrusted process.

The jailed harness runs model-written code in the same interpreter, so anything it
reports can be forged (a patched `Backtest.run` reported 9999 %). What it returns is
therefore only evidence: the list of trades. Here, with the candles the parent
itself loaded, every trade is checked (bars in range and in order, fill prices inside
their bar's low..high, no more notional than the equity at entry) and the equity
curve, return, drawdown, Sharpe, win rate and exposure are recomputed. A return the
child reported that disagrees with the trades fails the round.

What this cannot catch: code that fabricates trades which are each plausible (inside
the bars, within the cash). The numbers are consistent, not proven.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: at most this many trades per candle (the checks below are quadratic in trades)
MAX_TRADES_PER_BAR = 4
#: relative slack for prices and money (floating point, spread of 0)
TOLERANCE = 1e-6
#: the child's reported return may differ from ours by this many percentage points
RETURN_SLACK_PCT = 0.05


class StatsError(ValueError):
    """What the child returned is not a believable backtest; the message says why."""


@dataclass(slots=True, frozen=True)
class Bar:
    open: float
    high: float
    low: float
    close: float


@dataclass(slots=True, frozen=True)
class Trade:
    size: float
    entry_bar: int
    exit_bar: int
    entry_price: float
    exit_price: float
    commission: float

    @property
    def pnl(self) -> float:
        return self.size * (self.exit_price - self.entry_price) - self.commission


def bars_from(candles: Sequence[dict[str, Any]]) -> list[Bar]:
    return [
        Bar(float(c["open"]), float(c["high"]), float(c["low"]), float(c["close"])) for c in candles
    ]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatsError(f"{what} is not a number ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise StatsError(f"{what} is not finite ({number})")
    return number


def _bar_index(value: Any, what: str, bars: int) -> int:
    number = _number(value, what)
    if number != int(number) or not 0 <= number < bars:
        raise StatsError(f"{what} {value!r} is not a bar of the {bars} candles")
    return int(number)


def parse_trades(raw: Any, bars: Sequence[Bar]) -> list[Trade]:
    """The child's `trades` list ([size, entry_bar, exit_bar, entry, exit, commission])
    as checked Trades; StatsError on anything malformed or impossible."""
    if not isinstance(raw, list):
        raise StatsError("the backtest returned no list of trades")
    most = MAX_TRADES_PER_BAR * len(bars) + 16
    if len(raw) > most:
        raise StatsError(f"the backtest returned {len(raw)} trades (more than {most})")
    trades: list[Trade] = []
    for number, row in enumerate(raw, 1):
        if not isinstance(row, list) or len(row) != 6:
            raise StatsError(f"trade {number} is not [size, entry, exit, prices, commission]")
        size = _number(row[0], f"trade {number} size")
        entry = _bar_index(row[1], f"trade {number} entry bar", len(bars))
        exit_ = _bar_index(row[2], f"trade {number} exit bar", len(bars))
        trade = Trade(
            size,
            entry,
            exit_,
            _number(row[3], f"trade {number} entry price"),
            _number(row[4], f"trade {number} exit price"),
            _number(row[5], f"trade {number} commission"),
        )
        if size == 0:
            raise StatsError(f"trade {number} has size 0")
        if exit_ < entry:
            raise StatsError(f"trade {number} exits (bar {exit_}) before it enters (bar {entry})")
        if trade.commission < 0:
            raise StatsError(f"trade {number} has a negative commission")
        for label, bar, price in (
            ("entry", bars[entry], trade.entry_price),
            ("exit", bars[exit_], trade.exit_price),
        ):
            slack = TOLERANCE * max(abs(bar.high), 1.0)
            if not bar.low - slack <= price <= bar.high + slack:
                raise StatsError(
                    f"trade {number} {label} price {price:g} is outside its bar "
                    f"({bar.low:g}..{bar.high:g})"
                )
        trades.append(trade)
    return trades


def equity_curve(trades: Sequence[Trade], bars: Sequence[Bar], cash: float) -> list[float]:
    """Equity at each bar's close: cash plus realised PnL plus open trades marked to
    the close (an open trade's commission so far is its share at entry)."""
    equity: list[float] = []
    for index, bar in enumerate(bars):
        value = cash
        for t in trades:
            if t.exit_bar <= index:
                value += t.pnl
            elif t.entry_bar <= index:
                entry_commission = t.commission * (
                    abs(t.entry_price) / (abs(t.entry_price) + abs(t.exit_price) or 1.0)
                )
                value += t.size * (bar.close - t.entry_price) - entry_commission
        equity.append(value)
    return equity


def check_sizes(trades: Sequence[Trade], equity: Sequence[float], cash: float) -> None:
    """No trade opens more notional than the equity before its entry bar (margin 1)."""
    for number, t in enumerate(trades, 1):
        before = equity[t.entry_bar - 1] if t.entry_bar else cash
        open_notional = sum(
            abs(o.size) * o.entry_price
            for o in trades
            if o.entry_bar <= t.entry_bar < o.exit_bar or o is t
        )
        if open_notional > max(before, 0.0) * (1 + 0.01) + TOLERANCE:
            raise StatsError(
                f"trade {number} holds {open_notional:,.0f} of notional with "
                f"{before:,.0f} of equity (no leverage in this backtest)"
            )


def compute(
    raw_trades: Any,
    candles: Sequence[dict[str, Any]],
    cash: float,
    bars_per_year: float = 365.0,
    reported_return_pct: Any = None,
) -> dict[str, Any]:
    """The stats herd reports for a backtest, from the trades alone."""
    bars = bars_from(candles)
    if len(bars) < 2:
        raise StatsError("fewer than two candles: nothing to backtest")
    trades = parse_trades(raw_trades, bars)
    equity = equity_curve(trades, bars, cash)
    check_sizes(trades, equity, cash)
    final = cash + sum(t.pnl for t in trades)
    return_pct = (final / cash - 1.0) * 100.0
    if reported_return_pct is not None:
        reported = _number(reported_return_pct, "the reported return")
        if abs(reported - return_pct) > RETURN_SLACK_PCT:
            raise StatsError(
                f"the backtest reported a return of {reported:g}% but its trades give "
                f"{return_pct:.4g}%: the result was not trusted"
            )
    peak, worst = equity[0], 0.0
    for value in equity:
        peak = max(peak, value)
        if peak > 0:
            worst = min(worst, value / peak - 1.0)
    returns = [equity[i] / equity[i - 1] - 1.0 for i in range(1, len(equity)) if equity[i - 1] > 0]
    sharpe = None
    if len(returns) > 1:
        mean = sum(returns) / len(returns)
        var = sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
        if var > 0:
            sharpe = mean / math.sqrt(var) * math.sqrt(bars_per_year)
    held = {i for t in trades for i in range(t.entry_bar, t.exit_bar + 1)}
    wins = sum(1 for t in trades if t.pnl > 0)
    return {
        "return_pct": round(return_pct, 4),
        "buy_hold_return_pct": round((bars[-1].close / bars[0].close - 1.0) * 100.0, 4),
        "sharpe": None if sharpe is None else round(sharpe, 4),
        "max_drawdown_pct": round(worst * 100.0, 4),
        "trades": len(trades),
        "win_rate_pct": round(wins / len(trades) * 100.0, 4) if trades else None,
        "exposure_pct": round(len(held) / len(bars) * 100.0, 4),
        "equity_final": round(final, 4),
        "bars": len(bars),
        "computed_by": "herd, from the trades and the candles (not the child's numbers)",
    }
