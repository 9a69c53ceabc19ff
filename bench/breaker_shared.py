"""What sharing the circuit breaker through Redis costs per call, against the same
breaker per process, in the same run.

    python bench/breaker_shared.py [--calls 5000]

Needs a redis-server binary (one is started on a free loopback port and stopped at the
end). Two herds on the same zero-latency MockModels, called in turn (interleaved, so
machine noise hits both alike): `local` (the alerts plugin, breaker per process) and
`shared` (the same, plus `[plugins.serve] redis_url`: circuits shared through Redis).
  healthy   p50 of `herd.chat` on an alias whose circuit is closed
  open      p50 of `herd.chat` on an alias whose circuit is open (the breaker refuses
            it, the call goes to its fallback)
  check     p50 of `CircuitBreaker.check` alone on the open circuit (raises)
Then how long a circuit opened on one shared herd takes to be open on a second one
(pub/sub through the same Redis), over 20 aliases: p50 and max.
The shared herd's Redis work runs on its two background threads; the call path reads
the local view only (target: no Redis round trip per call, added p50 <= 1 µs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from modelherd import CircuitOpenError, ProviderError
from modelherd.plugins.observability import alerts
from modelherd.testing import MockModel, make_herd


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed — sudo apt-get install redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not start")


def _herd(redis_url: str | None, extra_sick: int = 0) -> Any:
    plugins: dict[str, Any] = {
        "alerts": {
            "status_file": False,
            "log": False,
            "breaker_cooldown_s": 3600,
            "recover_on": [],
        },
        "resource_monitor": {"enabled": False},
    }
    if redis_url:
        plugins["serve"] = {"redis_url": redis_url}
    sick = ["sick", *(f"sick{i}" for i in range(extra_sick))]
    models = {"ok": MockModel(), **{a: MockModel(default=ProviderError("down")) for a in sick}}
    return make_herd(
        models,
        config={"herd": {"retries": 0}, "plugins": plugins},
        plugins=(alerts,),
        fallbacks={a: ["ok"] for a in sick},
    )


async def propagation(url: str, rounds: int = 20) -> list[float]:
    """Seconds from a circuit opening on herd A to it being open on herd B."""
    a, b = _herd(url, rounds), _herd(url, rounds)
    for herd in (a, b):
        await herd.start()
        shared = alerts.alert_hooks(herd).shared  # type: ignore[union-attr]
        while not shared.ok:
            await asyncio.sleep(0.01)
    breaker_b = alerts.alert_hooks(b).breaker  # type: ignore[union-attr]
    lags = []
    for i in range(rounds):
        for _ in range(5):
            await a.chat(f"sick{i}", "x", cache="no-store")
        opened = time.perf_counter()  # A's circuit is open now (5th failure)
        deadline = opened + 5
        while breaker_b.state(f"sick{i}") != "open" and time.perf_counter() < deadline:
            time.sleep(0.0001)  # B's own threads do the work; this loop only looks
        lags.append(time.perf_counter() - opened)
    for herd in (a, b):
        await herd.aclose()
    return lags


async def run(calls: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _redis(tmp)
        try:
            herds = {"local": _herd(None), "shared": _herd(url)}
            for herd in herds.values():
                await herd.start()
            shared = alerts.alert_hooks(herds["shared"]).shared  # type: ignore[union-attr]
            deadline = time.monotonic() + 5
            while not shared.ok and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert shared.ok, "the shared breaker did not connect to the bench's Redis"
            for herd in herds.values():
                for _ in range(5):  # opens the circuit of "sick" (5 failures)
                    await herd.chat("sick", "x", cache="no-store")
                assert alerts.alert_hooks(herd).breaker.state("sick") == "open"  # type: ignore[union-attr]
            out: dict[str, dict[str, list[float]]] = {
                name: {"healthy": [], "open": [], "check": []} for name in herds
            }
            warmup = 300
            for i in range(calls + warmup):
                for name, herd in herds.items():
                    for alias, figure in (("ok", "healthy"), ("sick", "open")):
                        t0 = time.perf_counter_ns()
                        await herd.chat(alias, f"q {i}", cache="no-store")
                        if i >= warmup:
                            out[name][figure].append((time.perf_counter_ns() - t0) / 1000)
                    breaker = alerts.alert_hooks(herd).breaker  # type: ignore[union-attr]
                    t0 = time.perf_counter_ns()
                    with contextlib.suppress(CircuitOpenError):
                        breaker.check("sick")
                    if i >= warmup:
                        out[name]["check"].append((time.perf_counter_ns() - t0) / 1000)
            redis_round_trips = shared.counters
            for herd in herds.values():
                await herd.aclose()
            lags = await propagation(url)
        finally:
            proc.kill()
            proc.wait(5)
    result = {name: {k: pct(v, 0.5) for k, v in figures.items()} for name, figures in out.items()}
    result["redis"] = {k: float(v) for k, v in redis_round_trips.items()}
    result["propagation"] = {"p50": pct(lags, 0.5), "max": max(lags)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(run(args.calls))
    print(f"{args.calls} calls each, p50 µs (local = breaker per process, same run)")
    print(f"{'':10}{'local':>10}{'shared':>10}{'added':>10}{'ratio':>8}")
    for figure in ("healthy", "open", "check"):
        local, shared = result["local"][figure], result["shared"][figure]
        print(f"{figure:10}{local:10.2f}{shared:10.2f}{shared - local:10.2f}{shared / local:8.3f}x")
    counters = result["redis"]
    print(
        f"Redis work of the shared herd, all on its background threads: "
        f"{counters['published']:.0f} published, {counters['claims']:.0f} probe claims "
        f"(none on the call path)"
    )
    lag = result["propagation"]
    print(
        f"open on herd A -> open on herd B: p50 {lag['p50'] * 1000:.2f} ms, "
        f"max {lag['max'] * 1000:.2f} ms (20 aliases)"
    )


if __name__ == "__main__":
    main()
