"""Market data as a plugin: the bundled sample-file source, and the helper agents use.

Sources implement `provide_market_data(symbol, timeframe, limit, settings)` and return
candle dicts (time, open, high, low, close, volume), oldest first. This module's
source is `trylast`, so any real source (ccxt, yfinance … in a third-party plugin)
answers first. It reads, in order: the folder named by the agent's `data_path`
setting (`<SYMBOL>_<timeframe>.csv` or `.parquet`), then the bundled sample files.
The bundled candles are synthetic (scripts/make_sample_data.py), not real prices.
"""

from __future__ import annotations

import csv
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.errors import ConfigError

if TYPE_CHECKING:
    from modelherd import Herd

Candle = dict[str, Any]

_COLUMNS = ("time", "open", "high", "low", "close", "volume")


def base_symbol(symbol: str) -> str:
    """'btc', 'BTC/USDT', 'BTC-USD' -> 'BTC' (the sample files are named by base asset)."""
    cleaned = symbol.strip().upper()
    for sep in ("/", "-", ":"):
        cleaned = cleaned.split(sep, 1)[0]
    return cleaned


def bundled_symbols(timeframe: str | None = None) -> list[str]:
    names = []
    for entry in resources.files("modelherd.agents.data").iterdir():
        stem, _, ext = entry.name.rpartition(".")
        if ext == "csv" and "_" in stem:
            sym, tf = stem.rsplit("_", 1)
            if timeframe is None or tf == timeframe:
                names.append(sym)
    return sorted(set(names))


def _parse_rows(rows: list[dict[str, str]], source: str) -> list[Candle]:
    candles: list[Candle] = []
    for index, row in enumerate(rows, start=2):
        lowered = {k.strip().lower(): v for k, v in row.items() if k}
        missing = [c for c in _COLUMNS if c not in lowered]
        if missing:
            raise ConfigError(
                f"{source}: missing column(s) {', '.join(missing)} — the header must be "
                f"{','.join(_COLUMNS)}"
            )
        try:
            candles.append(
                {
                    "time": lowered["time"],
                    **{c: float(lowered[c]) for c in _COLUMNS[1:]},
                }
            )
        except ValueError:
            raise ConfigError(
                f"{source}: line {index} has a non-numeric price or volume — fix it"
            ) from None
    return candles


def read_csv_text(text: str, source: str) -> list[Candle]:
    return _parse_rows(list(csv.DictReader(text.splitlines())), source)


def _read_parquet(path: Path) -> list[Candle]:
    try:
        import pandas as pd
    except ImportError:
        from modelherd.errors import MissingDependencyError

        raise MissingDependencyError("pandas", "rbi", f"reading {path.name}") from None
    frame = pd.read_parquet(path)
    frame.columns = [str(c).lower() for c in frame.columns]
    records = frame.astype({"time": str}).to_dict("records")
    return _parse_rows([{k: str(v) for k, v in r.items()} for r in records], str(path))


def load_file_candles(symbol: str, timeframe: str, data_path: str | None) -> list[Candle] | None:
    """Candles from `data_path` (if set) or the bundled files; None if neither has them."""
    base = base_symbol(symbol)
    if data_path:
        folder = Path(os.path.expanduser(data_path))
        for name in (f"{base}_{timeframe}.csv", f"{symbol.upper()}_{timeframe}.csv"):
            path = folder / name
            if path.is_file():
                return read_csv_text(path.read_text(encoding="utf-8"), str(path))
        parquet = folder / f"{base}_{timeframe}.parquet"
        if parquet.is_file():
            return _read_parquet(parquet)
    bundled = resources.files("modelherd.agents.data").joinpath(f"{base}_{timeframe}.csv")
    if bundled.is_file():
        return read_csv_text(bundled.read_text(encoding="utf-8"), f"sample {base}_{timeframe}.csv")
    return None


@hookimpl
def add_hookspecs(pluginmanager: Any) -> None:
    from modelherd.agents import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl(trylast=True)
def provide_market_data(
    symbol: str, timeframe: str, limit: int, settings: dict[str, Any]
) -> list[Candle] | None:
    candles = load_file_candles(symbol, timeframe, settings.get("data_path"))
    if candles is None:
        return None
    return candles[-limit:] if limit > 0 else candles


def fetch_candles(
    herd: Herd, symbol: str, timeframe: str, limit: int, settings: dict[str, Any]
) -> list[Candle]:
    """Ask the market-data sources (best first); one clear error if nobody has it."""
    # the spec arrives with the market_data plugin (add_hookspecs); with that plugin
    # disabled there is no source at all, which is the error below
    caller = getattr(herd.hook, "provide_market_data", None)
    candles = (
        caller(symbol=symbol, timeframe=timeframe, limit=limit, settings=settings)
        if caller is not None
        else None
    )
    if not candles:
        known = ", ".join(bundled_symbols(timeframe)) or "none"
        raise ConfigError(
            f"no market data for '{symbol}' ({timeframe}) — bundled sample symbols for "
            f"{timeframe}: {known}; or set data_path to a folder with {base_symbol(symbol)}_"
            f"{timeframe}.csv, or install a market-data plugin"
        )
    return list(candles)
