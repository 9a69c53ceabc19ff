"""Tenant fairness benchmark: `python bench/tenants.py` (about 50 s on 2 cores).

Phase 1, one process: three tenants (basic, standard, premium) call a MockModel that
answers in 20 ms, 200 callers at once, the basic tenant flooding with 150 of them.
The scheduler admits at most 8 calls at a time (400 calls/s of capacity against
350 calls/s of limits), so its priority queue decides who waits. Reported per
tenant: achieved calls vs what its limit allows (burst + rate × time; target within
2 %), and the p99 queue wait (time from `herd.chat` to the model; target < 50 ms for
premium while basic is throttled).

Phase 2, two processes share one tenant's limit through a real redis-server (started
here on a free loopback port, stopped by PID): combined achieved calls vs one limit
(target within 2 %; without Redis the two would get twice the limit).

Callers that get QuotaExceededError sleep 0.1-0.5 × `retry_after` × their number,
so the demand stays about 3x above each limit without a busy loop. Prompts are
distinct, so no call is coalesced with another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

from modelherd.errors import OverloadedError, QuotaExceededError
from modelherd.plugins.resources import scheduler as scheduler_plugin
from modelherd.plugins.resources import tenants as tenants_plugin
from modelherd.testing import MockModel, make_herd
from modelherd.types import ChatRequest, ChatResponse

LATENCY = 0.02
#: calls the scheduler runs at once: 600 calls/s at 20 ms, against 350/s of limits
CAPACITY = 12
TENANTS = {  # name: (tier, requests/min, callers)
    "basic": ("basic", 3000, 150),
    "standard": ("standard", 6000, 25),
    "premium": ("premium", 12000, 25),
}
BURST_S = 0.1


class StampedModel(MockModel):
    """A MockModel that reports when the call reached it (queue wait = arrival - start)."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        arrived = time.perf_counter()
        response = await super().chat(request)
        response.provider_metrics["arrived"] = arrived
        return response


def tenant_config(
    redis_url: str | None, tenants: dict[str, tuple[str, int, int]], scheduler: bool
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tenants": {
            name: {"tier": tier, "requests_per_minute": rpm, "burst_s": BURST_S}
            for name, (tier, rpm, _) in tenants.items()
        },
        # only the request rate is measured here: token limits off (0 = no limit)
        "tiers": {
            tier: {"tokens_per_minute": 0, "daily_tokens": 0} for tier, _, _ in tenants.values()
        },
        "plugins": {},
    }
    if redis_url:
        config["plugins"]["tenants"] = {
            "redis_url": redis_url,
            "key_prefix": f"bench:{os.getpid()}:{time.time_ns()}",
        }
    if scheduler:
        config["plugins"]["scheduler"] = {
            "enabled": True,
            "max_concurrency": CAPACITY,
            "max_queue": 1000,
            "queue_timeout_s": 10,
            "actions": {"high": [], "critical": []},
        }
    return config


async def flood(
    herd: Any, tenant: str, callers: int, start: float, end: float, stats: dict[str, Any]
) -> None:
    """`callers` loops calling as `tenant` from `start` to `end` (perf_counter)."""
    waits: list[float] = stats.setdefault("waits", [])
    counter = 0

    async def caller() -> None:
        nonlocal counter
        while time.perf_counter() < start:
            await asyncio.sleep(start - time.perf_counter())
        while True:
            began = time.perf_counter()
            if began >= end:
                return
            try:
                counter += 1  # distinct prompts: identical ones would be coalesced
                response = await herd.chat("mock", f"hi {counter}", tenant=tenant, cache="no-store")
            except QuotaExceededError as exc:
                stats["rejected"] = stats.get("rejected", 0) + 1
                pause = (exc.retry_after or 0.01) * callers * random.uniform(0.1, 0.5)
                await asyncio.sleep(min(pause, max(0.0, end - time.perf_counter())))
                continue
            except OverloadedError:
                stats["shed"] = stats.get("shed", 0) + 1
                continue
            stats["ok"] = stats.get("ok", 0) + 1
            waits.append(response.provider_metrics["arrived"] - began)

    await asyncio.gather(*(caller() for _ in range(callers)))


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def phase_fairness(duration: float) -> dict[str, Any]:
    herd = make_herd(
        {"mock": StampedModel(latency=LATENCY)},
        config=tenant_config(None, TENANTS, scheduler=True),
        plugins=(tenants_plugin, scheduler_plugin),
    )
    await herd.start()
    start = time.perf_counter() + 0.2
    end = start + duration
    stats: dict[str, dict[str, Any]] = {name: {} for name in TENANTS}
    await asyncio.gather(
        *(
            flood(herd, name, callers, start, end, stats[name])
            for name, (_, _, callers) in TENANTS.items()
        )
    )
    await herd.aclose()
    out: dict[str, Any] = {"duration_s": duration, "tenants": {}}
    for name, (_, rpm, callers) in TENANTS.items():
        rate = rpm / 60
        allowed = rate * BURST_S + rate * duration
        ok = stats[name].get("ok", 0)
        out["tenants"][name] = {
            "callers": callers,
            "limit_per_s": rate,
            "allowed": round(allowed),
            "achieved": ok,
            "achieved_per_s": round(ok / duration, 1),
            "error_pct": round((ok / allowed - 1) * 100, 2),
            "rejected": stats[name].get("rejected", 0),
            "shed": stats[name].get("shed", 0),
            "p99_wait_ms": round(p99(stats[name].get("waits", [])) * 1000, 2),
            "p50_wait_ms": round(
                sorted(stats[name].get("waits", [0]))[len(stats[name].get("waits", [0])) // 2]
                * 1000,
                2,
            ),
        }
    out["calls"] = sum(t["achieved"] + t["rejected"] + t["shed"] for t in out["tenants"].values())
    return out


async def worker(
    redis_url: str, duration: float, start_wall: float, callers: int, rpm: int
) -> dict[str, Any]:
    shared = {"shared": ("basic", rpm, callers)}
    config = tenant_config(redis_url, shared, scheduler=False)
    config["plugins"]["tenants"]["key_prefix"] = "bench:shared"
    herd = make_herd(
        {"mock": StampedModel(latency=LATENCY)}, config=config, plugins=(tenants_plugin,)
    )
    await herd.start()
    plugin = herd.pm.get_plugin("tenants-calls")
    if plugin is None or plugin.redis is None or plugin.warned:
        raise SystemExit("worker could not reach Redis")
    # open the connection pool and load the scripts before the clock starts, so the
    # window measures the limit, not connection setup
    await asyncio.gather(*(plugin.redis.ping() for _ in range(callers)))
    await plugin.redis.bucket("warmup", "rpm", 1.0, 1.0, 0.0, "take")
    start = time.perf_counter() + (start_wall - time.time())
    stats: dict[str, Any] = {}
    await flood(herd, "shared", callers, start, start + duration, stats)
    await herd.aclose()
    return {"ok": stats.get("ok", 0), "rejected": stats.get("rejected", 0)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def phase_redis(duration: float, rpm: int = 6000, callers: int = 50) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        return {"skipped": "redis-server is not installed (apt-get install redis-server)"}
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        start_wall = time.time() + 3.0  # both processes import and connect before this
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    url,
                    "--duration",
                    str(duration),
                    "--start-at",
                    str(start_wall),
                    "--callers",
                    str(callers),
                    "--rpm",
                    str(rpm),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=duration + 60)
            if proc.returncode != 0:
                raise SystemExit(f"a worker failed (exit {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        server.terminate()
        server.wait(timeout=10)
    rate = rpm / 60
    allowed = rate * BURST_S + rate * duration
    combined = sum(r["ok"] for r in results)
    return {
        "processes": 2,
        "callers_each": callers,
        "limit_per_s": rate,
        "allowed": round(allowed),
        "per_process": [r["ok"] for r in results],
        "combined": combined,
        "error_pct": round((combined / allowed - 1) * 100, 2),
        "rejected": sum(r["rejected"] for r in results),
        "duration_s": duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="phase 1 seconds")
    parser.add_argument("--redis-duration", type=float, default=10.0, help="phase 2 seconds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--rpm", type=int, default=6000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = asyncio.run(
            worker(args.worker, args.duration, args.start_at or time.time(), args.callers, args.rpm)
        )
        print(json.dumps(result))
        return
    began = time.perf_counter()
    fairness = asyncio.run(phase_fairness(args.duration))
    shared = phase_redis(args.redis_duration)
    report = {
        "fairness": fairness,
        "redis_shared": shared,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    admitted = sum(t["achieved"] for t in fairness["tenants"].values())
    print(
        f"phase 1: {admitted} calls served, {fairness['calls']} attempts in "
        f"{args.duration:g}s, 200 callers, "
        f"MockModel {LATENCY * 1000:g} ms, scheduler capacity {CAPACITY}"
    )
    print(
        f"{'tenant':10} {'limit/s':>8} {'allowed':>8} {'achieved':>9} {'error':>7} "
        f"{'rejected':>9} {'p50 wait':>9} {'p99 wait':>9}"
    )
    for name, t in fairness["tenants"].items():
        print(
            f"{name:10} {t['limit_per_s']:8.0f} {t['allowed']:8d} {t['achieved']:9d} "
            f"{t['error_pct']:6.2f}% {t['rejected']:9d} {t['p50_wait_ms']:7.2f}ms "
            f"{t['p99_wait_ms']:7.2f}ms"
        )
    if "skipped" in shared:
        print(f"phase 2: skipped — {shared['skipped']}")
    else:
        print(
            f"phase 2: 2 processes x {shared['callers_each']} callers sharing "
            f"{shared['limit_per_s']:g}/s through Redis for {shared['duration_s']:g}s: "
            f"allowed {shared['allowed']}, achieved {shared['combined']} "
            f"({shared['per_process'][0]} + {shared['per_process'][1]}), "
            f"error {shared['error_pct']:.2f}%"
        )
    print(f"wall time {report['wall_s']}s")


if __name__ == "__main__":
    main()
