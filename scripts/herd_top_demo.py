"""Drive a small herd of MockModels and save one `herd top` frame (docs/images/).

    .venv/bin/python scripts/herd_top_demo.py docs/images/herd-top.svg

Four aliases with different speeds; one ("deepseek") fails until its circuit opens
and its calls go to its fallback; one answers badly (quality alert). The frame is the
real status document of this process, rendered by `herd top --svg`.
"""

from __future__ import annotations

import contextlib
import random
import sys
import tempfile
from pathlib import Path

import anyio
from modelherd import ProviderError
from modelherd.plugins.observability import alerts
from modelherd.plugins.observability.alerts.top import save_svg
from modelherd.plugins.resources import monitor as resource_monitor
from modelherd.testing import MockModel, make_herd


async def main(out: Path) -> None:
    rng = random.Random(7)
    models = {
        "local": MockModel(latency=0.030, default="HOLD: the trend is flat"),
        "claude": MockModel(latency=0.060, default='{"action": "BUY", "confidence": 0.7}'),
        "gpt": MockModel(latency=0.045, default='{"action": "BUY", "confidence": 0.6}'),
        "deepseek": MockModel(latency=0.020),
    }
    models["deepseek"].enqueue(*[ProviderError("upstream 503")] * 5)
    models["local"].enqueue(*(["not json"] * 3 + ['{"action": "NOTHING"}'] * 20) * 3)
    status_dir = Path(tempfile.mkdtemp())
    herd = make_herd(
        models,
        config={
            "herd": {"retries": 0},
            "models": {
                "local": {"provider": "mock", "model": "smollm2-135m", "n_ctx": 2048},
                "claude": {
                    "provider": "mock",
                    "model": "claude-sonnet-4-5",
                    "context_window": 200000,
                },
                "gpt": {"provider": "mock", "model": "gpt-5-mini", "context_window": 128000},
                "deepseek": {"provider": "mock", "model": "deepseek-chat", "fallbacks": ["gpt"]},
            },
            "plugins": {
                "alerts": {"status_dir": str(status_dir), "eval_interval_s": 3600, "window_s": 30},
                "resource_monitor": {"interval_s": 0.5},
            },
        },
        plugins=(alerts, resource_monitor),
    )

    def valid(response: object) -> bool:
        return str(getattr(response, "content", "")).startswith("{")

    async def worker(alias: str, n: int, temperature: float) -> None:
        for _ in range(n):
            prompt = " ".join(["candle"] * rng.randint(40, 400))
            with contextlib.suppress(Exception):
                await herd.chat(
                    alias, prompt, temperature=temperature, validate=valid, cache="no-store"
                )

    async with herd:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "local", 60, 0.0)
            tg.start_soon(worker, "claude", 30, 0.7)
            tg.start_soon(worker, "gpt", 40, 0.3)
            tg.start_soon(worker, "deepseek", 50, 0.5)
        hooks = alerts.alert_hooks(herd)
        assert hooks is not None
        hooks.evaluate()
        status = hooks.status()
        save_svg(status, out)
    print(f"saved {out}")


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1] if len(sys.argv) > 1 else "herd-top.svg"))
