"""Hook specifications of the agents' family, added to the kernel's plugin manager by
the `market_data` plugin's `add_hookspecs` (the kernel's own specs stay kernel-only)."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("modelherd")


@hookspec(firstresult=True)
def provide_market_data(
    symbol: str, timeframe: str, limit: int, settings: dict[str, Any]
) -> Any | None:
    """When an agent needs OHLCV candles for `symbol`.

    Return a list of candle dicts (time, open, high, low, close, volume), oldest
    first, at most `limit` long, or None if this source does not have the symbol.
    `settings` is the agent's `[agents.<name>]` table. firstresult; the bundled
    sample-file source is trylast so real sources win.
    """
