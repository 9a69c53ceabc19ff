"""A paper portfolio: cash, long positions, stop-loss / take-profit, saved as JSON.

Paper trading is the default for every agent. Nothing here talks to an exchange:
real orders go only through an execution plugin and an explicit `--live` flag.

A round that trades goes through `portfolio_round`: under a lock on the portfolio
(and its journal) it reloads the saved state, lets the agent apply its fills, and
commits portfolio and journal together — two agents on one portfolio never lose a
fill. The commit point is the atomic replace of the portfolio file, which carries the
round's journal lines in an `outbox`; the lines are then appended to the journal and
the outbox cleared. A process killed anywhere in between leaves either the old state
(nothing happened) or an outbox that the next round appends (by line id, never
twice) before it does anything else.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from modelherd.lazy_model import LazyModel
from pydantic import Field, ValidationError

from . import storage


class Position(LazyModel):
    symbol: str
    qty: float
    entry_price: float
    stop_loss: float | None = None
    take_profit: float | None = None
    opened_at: str = Field(default_factory=storage.utc_now)
    source: str = ""


class Fill(LazyModel):
    """One paper trade."""

    symbol: str
    side: str  # "buy" | "sell"
    qty: float
    price: float
    reason: str
    at: str = Field(default_factory=storage.utc_now)
    pnl: float | None = None


class JournalOutbox(LazyModel):
    journal: str
    #: the journal's size when the lines were committed: they are after this offset
    offset: int
    ids: list[str]
    lines: list[str]


class Portfolio(LazyModel):
    name: str = "paper"
    initial_cash: float = 10_000.0
    cash: float = 10_000.0
    positions: dict[str, Position] = Field(default_factory=dict)
    fills: list[Fill] = Field(default_factory=list)
    #: last seen price per symbol (for equity between runs)
    marks: dict[str, float] = Field(default_factory=dict)
    #: journal lines committed with this state, maybe not yet in the journal file
    outbox: JournalOutbox | None = None

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
    """The saved paper portfolio `name`, or a fresh one with `initial_cash` (a view:
    trade through `portfolio_round`)."""
    path = portfolio_path(name, data_dir)
    if not path.is_file():
        return Portfolio(name=name, initial_cash=initial_cash, cash=initial_cash)
    try:
        return Portfolio.model_validate(storage.read_json(path))
    except (ValueError, ValidationError, RecursionError):
        raise storage.StorageError(
            f"{path} is not a readable portfolio — move it away to start a fresh one"
        ) from None


def save_portfolio(portfolio: Portfolio, data_dir: str | None = None) -> Path:
    """Replace the saved portfolio (no journal): under the portfolio's lock."""
    path = portfolio_path(portfolio.name, data_dir)
    with storage.locked(path):
        return storage.write_json(path, portfolio.model_dump(mode="json"))


class PortfolioRound:
    """The portfolio as saved when the round began (under the lock), and the journal
    entries the round will commit with it."""

    def __init__(self, portfolio: Portfolio, journal: storage.Journal | None) -> None:
        self.portfolio = portfolio
        self.journal = journal
        self.entries: list[dict[str, Any]] = []
        self.discarded = False

    def discard(self) -> None:
        """Commit nothing when the block ends (the state was only read)."""
        self.discarded = True

    def record(self, entry: dict[str, Any]) -> None:
        if self.journal is None:
            raise ValueError("this round has no journal")
        self.entries.append({"ts": storage.utc_now(), "id": uuid.uuid4().hex, **entry})


@contextmanager
def portfolio_round(
    name: str,
    data_dir: str | None = None,
    initial_cash: float = 10_000.0,
    journal: Path | None = None,
) -> Iterator[PortfolioRound]:
    """Lock, reload, let the caller trade, commit portfolio and journal together. An
    exception inside the block commits nothing."""
    path = portfolio_path(name, data_dir)
    book = storage.Journal(journal) if journal is not None else None
    with storage.locked(path), _journal_lock(book):
        storage.remove_stale_temps(path)
        portfolio = load_portfolio(name, data_dir, initial_cash)
        if portfolio.outbox is not None:
            _deliver(path, portfolio, held=book)
        current = PortfolioRound(portfolio, book)
        yield current
        if not current.discarded:
            _commit(path, current)


@asynccontextmanager
async def trading_round(
    name: str,
    data_dir: str | None = None,
    initial_cash: float = 10_000.0,
    journal: Path | None = None,
) -> AsyncIterator[PortfolioRound]:
    """`portfolio_round` for async code: the lock is waited for and the commit written
    in a worker thread, so a second agent in the same process waits without blocking
    the event loop."""
    import anyio

    manager = portfolio_round(name, data_dir, initial_cash, journal)
    current = await anyio.to_thread.run_sync(manager.__enter__)
    try:
        yield current
    except BaseException as exc:
        await anyio.to_thread.run_sync(manager.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await anyio.to_thread.run_sync(manager.__exit__, None, None, None)


@contextmanager
def _journal_lock(book: storage.Journal | None) -> Iterator[None]:
    if book is None:
        yield
        return
    with storage.locked(book.path):
        yield


def _commit(path: Path, current: PortfolioRound) -> None:
    portfolio, book = current.portfolio, current.journal
    if current.entries and book is not None:
        book.repair()
        lines = [storage.encode_line(e).decode("utf-8") for e in current.entries]
        portfolio.outbox = JournalOutbox(
            journal=str(book.path),
            offset=book.size(),
            ids=[e["id"] for e in current.entries],
            lines=lines,
        )
        storage.write_json(path, portfolio.model_dump(mode="json"))  # the commit point
        book.append_lines([line.encode("utf-8") for line in lines])
        portfolio.outbox = None
    storage.write_json(path, portfolio.model_dump(mode="json"))


def _deliver(path: Path, portfolio: Portfolio, held: storage.Journal | None) -> None:
    """Append the outbox lines a killed round committed but did not journal."""
    outbox = portfolio.outbox
    assert outbox is not None
    book = storage.Journal(Path(outbox.journal))
    same = held is not None and held.path.resolve() == book.path.resolve()
    with _journal_lock(None if same else book):
        book.repair()
        present = {e.get("id") for e in storage.parse_lines(book.read_from(outbox.offset))}
        missing = [
            line.encode("utf-8")
            for line_id, line in zip(outbox.ids, outbox.lines, strict=True)
            if line_id not in present
        ]
        book.append_lines(missing)
    portfolio.outbox = None
    storage.write_json(path, portfolio.model_dump(mode="json"))
