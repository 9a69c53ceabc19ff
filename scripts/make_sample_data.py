"""Regenerate the bundled sample OHLCV in agents/data/ (deterministic, no network).

    python scripts/make_sample_data.py

The candles are synthetic: a seeded geometric random walk with regime changes, so
tests and the offline demo have realistic-looking data that never changes between
runs. They are NOT real market prices; docs/agents.md says so.
"""

from __future__ import annotations

import csv
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "agents" / "data"

#: symbol -> (start price, daily volatility, typical daily volume, seed)
SYMBOLS = {
    "BTC": (42_000.0, 0.028, 25_000.0, 11),
    "ETH": (2_300.0, 0.035, 320_000.0, 22),
    "SOL": (95.0, 0.05, 2_500_000.0, 33),
}
START = datetime(2026, 1, 1, tzinfo=UTC)
TIMEFRAMES = {"1d": (timedelta(days=1), 180), "1h": (timedelta(hours=1), 24 * 30)}


def _walk(
    start: float, vol: float, base_volume: float, seed: int, step: timedelta, count: int
) -> list[list[str]]:
    rng = random.Random(seed * 1000 + int(step.total_seconds()))
    scale = math.sqrt(step.total_seconds() / 86_400)
    price = start
    drift = 0.0
    rows: list[list[str]] = []
    for i in range(count):
        if i % max(count // 6, 1) == 0:  # a new regime every ~month: up, down or flat
            drift = rng.choice([-0.004, -0.001, 0.0, 0.002, 0.005]) * scale
        ret = drift + rng.gauss(0.0, vol * scale)
        open_ = price
        close = max(open_ * math.exp(ret), 0.01)
        wiggle = abs(rng.gauss(0.0, vol * scale * 0.6))
        high = max(open_, close) * (1 + wiggle)
        low = min(open_, close) * (1 - wiggle * rng.random())
        volume = base_volume * scale * math.exp(rng.gauss(0.0, 0.35)) * (1 + 8 * abs(ret))
        when = START + step * i
        digits = 2 if start > 10 else 4
        rows.append(
            [
                when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                f"{open_:.{digits}f}",
                f"{high:.{digits}f}",
                f"{low:.{digits}f}",
                f"{close:.{digits}f}",
                f"{volume:.2f}",
            ]
        )
        price = close
    return rows


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for symbol, (start, vol, volume, seed) in SYMBOLS.items():
        for timeframe, (step, count) in TIMEFRAMES.items():
            path = OUT / f"{symbol}_{timeframe}.csv"
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["time", "open", "high", "low", "close", "volume"])
                writer.writerows(_walk(start, vol, volume, seed, step, count))
            print(f"wrote {path.relative_to(OUT.parent.parent)}")


if __name__ == "__main__":
    main()
