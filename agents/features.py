"""Compact features from candles, so a prompt fits a small model's context window.

A few numbers say most of what a chart says: recent returns, where the price sits
against its moving averages, RSI, volume against its average, and volatility.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

Candle = dict[str, Any]


def sma(values: list[float], window: int) -> float | None:
    if len(values) < window or window <= 0:
        return None
    return sum(values[-window:]) / window


def rsi(closes: list[float], period: int = 14) -> float | None:
    """Wilder's RSI over `period` bars; None without enough history."""
    if len(closes) <= period:
        return None
    gains = losses = 0.0
    for prev, cur in itertools.pairwise(closes[-period - 1 :]):
        change = cur - prev
        gains += max(change, 0.0)
        losses += max(-change, 0.0)
    if losses == 0:
        return 100.0
    rs = (gains / period) / (losses / period)
    return 100.0 - 100.0 / (1.0 + rs)


def pct(new: float, old: float) -> float | None:
    return (new / old - 1.0) * 100.0 if old else None


def compute(candles: list[Candle], fast: int = 10, slow: int = 30) -> dict[str, Any]:
    """The feature dict (rounded), from oldest-first candles."""
    if len(candles) < 2:
        raise ValueError("need at least 2 candles to compute features")
    closes = [float(c["close"]) for c in candles]
    volumes = [float(c["volume"]) for c in candles]
    last = closes[-1]
    sma_fast, sma_slow = sma(closes, fast), sma(closes, slow)
    rets = [math.log(b / a) for a, b in itertools.pairwise(closes) if a > 0 and b > 0]
    window = rets[-20:]
    mean = sum(window) / len(window)
    vol = math.sqrt(sum((r - mean) ** 2 for r in window) / max(len(window) - 1, 1)) * 100.0
    avg_volume = sma(volumes[:-1], min(20, len(volumes) - 1))
    feats: dict[str, Any] = {
        "time": candles[-1]["time"],
        "close": last,
        "ret_1_pct": pct(last, closes[-2]),
        "ret_7_pct": pct(last, closes[-8]) if len(closes) >= 8 else None,
        f"sma{fast}": sma_fast,
        f"sma{slow}": sma_slow,
        f"close_vs_sma{slow}_pct": pct(last, sma_slow) if sma_slow else None,
        "trend": (
            None
            if sma_fast is None or sma_slow is None
            else "up"
            if sma_fast > sma_slow
            else "down"
        ),
        "rsi14": rsi(closes),
        "volume_vs_avg20_pct": pct(volumes[-1], avg_volume) if avg_volume else None,
        "volatility_pct": vol,
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in feats.items()}


def prompt_lines(symbol: str, timeframe: str, feats: dict[str, Any]) -> str:
    """One short line per feature; missing ones are left out."""
    lines = [f"{symbol} ({timeframe} candles, last at {feats['time']})"]
    for key, value in feats.items():
        if key == "time" or value is None:
            continue
        lines.append(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines)
