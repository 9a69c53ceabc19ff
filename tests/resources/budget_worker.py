"""One process of the cross-process budget test: call until the budget refuses.

argv: redis_url key_prefix concurrency start_at (epoch s: both processes begin together). Prints {"ok": n, "refused": m} as JSON.
Every call costs exactly 0.1 USD (one output token at 100 000 USD per million).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from modelherd.errors import BudgetExceededError
from modelherd.plugins import cost
from modelherd.plugins.resources.tenants import budgets
from modelherd.testing import MockModel, make_herd

CONFIG = {
    "models": {
        "m": {
            "provider": "mock",
            "model": "mock-1",
            "price": {"input_per_mtok": 0, "output_per_mtok": 100_000},
        }
    },
}


async def main(url: str, prefix: str, concurrency: int, start_at: float) -> None:
    config = {
        **CONFIG,
        "plugins": {
            "budgets": {"redis_url": url, "key_prefix": prefix, "tenants": {"t": {"daily": 1.0}}}
        },
    }
    herd = make_herd({"m": MockModel(latency=0.05)}, config=config, plugins=(cost, budgets))
    counts = {"ok": 0, "refused": 0}

    async def worker() -> None:
        while True:
            try:
                await herd.chat("m", "hi", tenant="t")
            except BudgetExceededError:
                counts["refused"] += 1
                return
            counts["ok"] += 1

    async with herd:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps(counts))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
