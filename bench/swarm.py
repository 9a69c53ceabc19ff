"""Swarm fan-out efficiency: does asking N members cost the slowest member, not the sum?

    python bench/swarm.py

Members are MockModels with a fixed latency (distinct model ids, so the kernel does not
coalesce their identical requests); every member must answer (no early stop). The
ratio is the swarm's wall time over the slowest member's latency, through the full
pipeline (kernel call, parsing, tally). Targets: 8 x 200 ms <= 1.1x, 64 x 50 ms <= 1.2x.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import anyio
from modelherd.agents import swarm as swarm_plugin
from modelherd.testing import MockModel, make_herd
from modelherd.types import ModelSpec

ANSWER = json.dumps({"answer": "YES", "confidence": 0.9, "reasoning": "bench"})

CASES = [(8, 0.200, 1.1), (64, 0.050, 1.2)]


def measure(members: int, latency: float, repeats: int = 9) -> dict[str, Any]:
    """Wall and CPU times of `repeats` swarm runs (after one warm-up run)."""
    models = {}
    for i in range(members):
        name = f"m{i}"
        model = MockModel(
            ModelSpec(alias=name, provider="mock", model=f"bench-{name}"),
            latency=latency,
            default=ANSWER,
        )
        models[name] = model
    herd = make_herd(
        models,
        config={
            "agents": {
                "swarm": {"members": list(models), "samples": 1, "early_stop": False, "save": False}
            }
        },
        plugins=(swarm_plugin,),
    )
    agent = herd.agent("swarm")
    times: list[float] = []
    cpu: list[float] = []

    async def go() -> None:
        await agent.ask("bench?", labels=["YES", "NO"])  # warm-up: model objects, schema
        for _ in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            result = await agent.ask("bench?", labels=["YES", "NO"])
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
            assert result.consensus.label == "YES" and len(result.votes) == 1
        await herd.aclose()

    anyio.run(go)
    return {
        "members": members,
        "latency_s": latency,
        "best_s": min(times),
        "median_s": statistics.median(times),
        "best_ratio": min(times) / latency,
        "median_ratio": statistics.median(times) / latency,
        "cpu_per_member_us": statistics.median(cpu) / members * 1e6,
    }


def main() -> int:
    os.environ.setdefault("HERD_DATA_DIR", tempfile.mkdtemp(prefix="herd-bench-"))
    failed = False
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print(
        f"load average per core: {load:.2f} (wall ratios grow when other processes "
        f"compete for the CPU; the CPU cost per member does not)"
    )
    for members, latency, target in CASES:
        r = measure(members, latency)
        ok = r["median_ratio"] <= target
        failed |= not ok
        print(
            f"swarm {members:>3} members x {latency * 1000:.0f} ms: median "
            f"{r['median_s'] * 1000:.1f} ms = {r['median_ratio']:.3f}x the slowest member "
            f"(best {r['best_ratio']:.3f}x; target <= {target}x) {'ok' if ok else 'MISSED'}; "
            f"CPU {r['cpu_per_member_us']:.0f} µs per member (kernel call included)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
