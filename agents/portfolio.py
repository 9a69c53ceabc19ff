"""A paper portfolio: cash, long positions, stop-loss / take-profit, saved as JSON.

Paper trading is the default for every agent. Nothing here talks to an exchange:
real orders go only through an execution plugin and an explicit `--live` flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from . import storage


class Position(BaseModel):
    symbol: str
    qty: float
    entry_price: float
    stop_loss: float | None = None
    take_profit: float | None = None
    opened_at: str = Field(default_factory=storage.utc_now)
    source: str = ""


class Fill(BaseModel):
    """One paper trade."""

    symbol: str
    side: str  # "buy" | "sell"
    qty: float
    price: float
    reason: str
    at: str = Field(default_factory=storage.utc_now)
    pnl: float | None = None


class Portfolio(BaseModel):
    name: str = "paper"
    initial_cash: float = 10_000.0
    cash: float = 10_000.0
    positions: dict[str, Position] = Field(default_factory=dict)
    fills: list[Fill] = Field(default_factory=list)
    #: last seen price per symbol (for equity between runs)
    marks: dict[str, float] = Field(default_factory=dict)

    # ---- valuation --------------------------------------------------------------

    def mark(self, prices: dict[str, float]) -> None:
        self.marks.update(prices)

    def position_value(self, symbol: str) -> float:
        pos = self.positions.get(symbol)
        if pos is None:
            return 0.0
        return pos.qty * self.marks.get(symbol, pos.entry_price)

    def exposure(self) -> float:
        return sum(self.position_value(s) for s in self.positions)

    def equity(self) -> float:
        return self.cash + self.exposure()

    def pnl_pct(self) -> float:
        return (self.equity() / self.initial_cash - 1.0) * 100.0 if self.initial_cash else 0.0

    # ---- trades -----------------------------------------------------------------

    def buy(
        self,
        symbol: str,
        notional: float,
        price: float,
        *,
        reason: str,
        stop_loss_pct: float | None = None,
        take_profit_pct: float | None = None,
        source: str = "",
    ) -> Fill | None:
        """Open or add to a long position worth `notional` (capped by cash)."""
        notional = min(notional, self.cash)
        if notional <= 0 or price <= 0:
            return None
        qty = notional / price
        pos = self.positions.get(symbol)
        if pos is None:
            pos = Position(symbol=symbol, qty=qty, entry_price=price, source=source)
            self.positions[symbol] = pos
        else:  # average in
            total = pos.qty + qty
            pos.entry_price = (pos.entry_price * pos.qty + price * qty) / total
            pos.qty = total
        pos.stop_loss = price * (1 - stop_loss_pct / 100) if stop_loss_pct else None
        pos.take_profit = price * (1 + take_profit_pct / 100) if take_profit_pct else None
        self.cash -= notional
        self.marks[symbol] = price
        fill = Fill(symbol=symbol, side="buy", qty=qty, price=price, reason=reason)
        self.fills.append(fill)
        return fill

    def sell(self, symbol: str, price: float, *, reason: str, fraction: float = 1.0) -> Fill | None:
        """Close `fraction` (0..1] of a long position."""
        pos = self.positions.get(symbol)
        if pos is None or price <= 0 or fraction <= 0:
            return None
        fraction = min(fraction, 1.0)
        qty = pos.qty * fraction
        pnl = (price - pos.entry_price) * qty
        self.cash += qty * price
        if fraction >= 1.0 - 1e-12:
            del self.positions[symbol]
        else:
            pos.qty -= qty
        self.marks[symbol] = price
        fill = Fill(symbol=symbol, side="sell", qty=qty, price=price, reason=reason, pnl=pnl)
        self.fills.append(fill)
        return fill

    def check_exits(self, prices: dict[str, float]) -> list[Fill]:
        """Close positions whose stop-loss or take-profit the latest price crossed."""
        fills: list[Fill] = []
        for symbol, pos in list(self.positions.items()):
            price = prices.get(symbol)
            if price is None:
                continue
            if pos.stop_loss is not None and price <= pos.stop_loss:
                fill = self.sell(symbol, price, reason=f"stop-loss at {pos.stop_loss:.4g}")
            elif pos.take_profit is not None and price >= pos.take_profit:
                fill = self.sell(symbol, price, reason=f"take-profit at {pos.take_profit:.4g}")
            else:
                continue
            if fill is not None:
                fills.append(fill)
        return fills

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cash": round(self.cash, 2),
            "equity": round(self.equity(), 2),
            "exposure": round(self.exposure(), 2),
            "pnl_pct": round(self.pnl_pct(), 3),
            "positions": {
                s: {
                    "qty": round(p.qty, 8),
                    "entry": p.entry_price,
                    "value": round(self.position_value(s), 2),
                }
                for s, p in self.positions.items()
            },
        }


def portfolio_path(name: str, data_dir: str | None = None) -> Path:
    return storage.data_dir(data_dir) / "portfolios" / f"{name}.json"


def load_portfolio(
    name: str, data_dir: str | None = None, initial_cash: float = 10_000.0
) -> Portfolio:
    """The saved paper portfolio `name`, or a fresh one with `initial_cash`."""
    path = portfolio_path(name, data_dir)
    if path.is_file():
        return Portfolio.model_validate(storage.read_json(path))
    return Portfolio(name=name, initial_cash=initial_cash, cash=initial_cash)


def save_portfolio(portfolio: Portfolio, data_dir: str | None = None) -> Path:
    return storage.write_json(
        portfolio_path(portfolio.name, data_dir), portfolio.model_dump(mode="json")
    )
