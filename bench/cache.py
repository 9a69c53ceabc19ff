"""Response cache benchmark: one command, every ratio measured in the same run.

    .venv/bin/python bench/cache.py            # table
    .venv/bin/python bench/cache.py --json     # for scripts

Measures, end to end through `herd.chat` (build request, key, lookup, copy, hooks):
- a hit in L1 (memory), L2 (disk, SQLite WAL; also with Fernet encryption, and signed
  vs the unauthenticated checksum of earlier versions, interleaved) and
  L3 (Redis on loopback; a
  redis-server is started on a free port when the binary exists), each next to
  the same run's baseline: the same MockModel called directly, and the miss path;
- `request_key` alone (it is on every cached call);
- the entry codec alone: HMAC-SHA256 signing (encode + decode) against the old
  unauthenticated BLAKE2b checksum, the ratio printed;
- coalescing: 100 identical concurrent calls on a 50 ms MockModel;
- the hit rate of a skewed workload (Zipf-like, 200 prompts, 5000 calls) on L1.
Targets (issue 4): L1 p50 <= 25 µs, L2 <= 300 µs, L3 <= 500 µs; 100 concurrent
calls -> exactly 1 upstream call in < 60 ms. Runs in well under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modelherd.cache import request_key
from modelherd.kernel import Herd
from modelherd.plugins.cache import codec
from modelherd.plugins.cache import disk as cache_disk
from modelherd.plugins.cache import memory as cache_memory
from modelherd.plugins.cache import redis as cache_redis
from modelherd.testing import MockModel, make_herd
from modelherd.types import ChatResponse

TARGETS_US = {"memory": 25.0, "disk": 300.0, "redis": 500.0}


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    """n timings in µs (after a warm-up), GC paused so one collection does not skew p50."""
    for i in range(min(200, n)):
        await call(i)
    out = []
    gc.disable()
    try:
        for i in range(n):
            start = time.perf_counter_ns()
            await call(i)
            out.append((time.perf_counter_ns() - start) / 1000)
    finally:
        gc.enable()
    return out


def herd_for(plugins: dict[str, Any], model: MockModel | None = None) -> tuple[Herd, MockModel]:
    model = model or MockModel(default="The answer is 42. " * 8)
    herd = make_herd(
        {"mock": model},
        config={"plugins": plugins},
        plugins=(cache_memory, cache_disk, cache_redis),
    )
    return herd, model


PROMPT = [
    {"role": "system", "content": "You are a terse trading assistant."},
    {"role": "user", "content": "BTC 1h candles show a higher low. BUY, SELL or NOTHING?"},
]


async def bench_tier(
    name: str, plugins: dict[str, Any], n: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    herd, _model = herd_for(plugins)
    if env:
        herd.env = env
    async with herd:
        await herd.chat("mock", PROMPT, temperature=0)
        hits = await timed(n, lambda i: herd.chat("mock", PROMPT, temperature=0))
        last = await herd.chat("mock", PROMPT, temperature=0)
        assert last.cache_tier == name, f"expected a {name} hit, got {last.cache_tier}"
        misses = await timed(
            min(n, 1000),
            lambda i: herd.chat(
                "mock",
                [*PROMPT, {"role": "user", "content": f"{name} miss {i} {random.random()}"}],
                temperature=0,
            ),
        )
    return {"hit_p50_us": p50(hits), "miss_p50_us": p50(misses)}


class ChecksumSeal:
    """The unauthenticated format of earlier versions (BLAKE2b checksum): the baseline
    the HMAC's cost is measured against. Bench only — the tiers no longer accept it."""

    def seal(self, body: bytes) -> bytes:
        import hashlib

        return b"H1" + hashlib.blake2b(body, digest_size=16).digest() + body

    def open(self, blob: bytes) -> bytes:
        import hashlib

        body = blob[18:]
        if hashlib.blake2b(body, digest_size=16).digest() != blob[2:18]:
            raise codec.CorruptEntryError("checksum mismatch")
        return body


async def bench_signed_vs_unsigned_disk(folder: str, n: int) -> dict[str, float]:
    """Disk hits with signed entries and with the unsigned checksum of earlier versions
    (that seal swapped in), interleaved call by call so both see the same machine load."""
    signed, _ = herd_for(
        {"cache_memory": {"enabled": False}, "cache_disk": {"path": folder + "/s.db"}}
    )
    unsigned, _ = herd_for(
        {"cache_memory": {"enabled": False}, "cache_disk": {"path": folder + "/u.db"}}
    )
    real = cache_disk.make_seal
    cache_disk.make_seal = lambda *a, **k: ChecksumSeal()  # type: ignore[assignment]
    try:
        await unsigned.start()
    finally:
        cache_disk.make_seal = real
    await signed.start()
    samples: dict[str, list[float]] = {"signed": [], "unsigned": []}
    herds = {"signed": signed, "unsigned": unsigned}
    try:
        for herd in herds.values():
            await herd.chat("mock", PROMPT, temperature=0)
        gc.disable()
        for i in range(n + 200):
            for name, herd in herds.items():
                start = time.perf_counter_ns()
                hit = await herd.chat("mock", PROMPT, temperature=0)
                if i >= 200:  # after a warm-up
                    samples[name].append((time.perf_counter_ns() - start) / 1000)
                assert hit.cache_tier == "disk"
    finally:
        gc.enable()
        for herd in herds.values():
            await herd.aclose()
    signed_us, unsigned_us = p50(samples["signed"]), p50(samples["unsigned"])
    return {
        "signed_hit_p50_us": signed_us,
        "unsigned_hit_p50_us": unsigned_us,
        "ratio": signed_us / unsigned_us,
    }


def bench_codec(n: int) -> dict[str, float]:
    """encode + decode of one typical entry, signed vs the old checksum, interleaved."""
    response = ChatResponse(content="The answer is 42. " * 8, model="m", provider="mock")
    key = "-:" + "0" * 40
    seals = {"hmac": codec.HmacSeal(b"k" * 32), "checksum": ChecksumSeal()}
    samples: dict[str, list[float]] = {name: [] for name in seals}
    gc.disable()
    try:
        for _ in range(n):
            for name, seal in seals.items():
                start = time.perf_counter_ns()
                codec.decode(key, codec.encode(key, response, seal), seal)
                samples[name].append((time.perf_counter_ns() - start) / 1000)
    finally:
        gc.enable()
    hmac_us, plain_us = p50(samples["hmac"]), p50(samples["checksum"])
    return {"hmac_p50_us": hmac_us, "checksum_p50_us": plain_us, "ratio": hmac_us / plain_us}


async def bench_direct(n: int) -> dict[str, float]:
    herd, model = herd_for({"cache_memory": {"enabled": False}})
    request = herd.build_request("mock", PROMPT, temperature=0)
    direct = await timed(n, lambda i: model.chat(request))
    keys = []
    for _ in range(n):
        start = time.perf_counter_ns()
        request_key(request)
        keys.append((time.perf_counter_ns() - start) / 1000)
    async with herd:
        nocache = await timed(n, lambda i: herd.chat("mock", PROMPT, temperature=0))
    return {"direct_p50_us": p50(direct), "key_p50_us": p50(keys), "no_cache_p50_us": p50(nocache)}


async def bench_coalesce(rounds: int = 5) -> dict[str, Any]:
    results = []
    for r in range(rounds):
        model = MockModel(latency=0.05)
        herd, _ = herd_for({}, model)
        async with herd:
            await herd.chat("mock", "warm-up")  # start-up cost is not the coalescer's
            start = time.perf_counter()
            answers = await asyncio.gather(
                *(herd.chat("mock", f"same question {r}") for _ in range(100))
            )
            took = time.perf_counter() - start
        assert all(a.content == "ok" for a in answers)
        results.append((len(model.history) - 1, took * 1000))
    upstream = [u for u, _ in results]
    times = sorted(t for _, t in results)
    return {
        "upstream_calls": upstream,
        "total_ms_median": times[len(times) // 2],
        "total_ms_max": times[-1],
    }


async def bench_hit_rate() -> dict[str, float]:
    herd, _ = herd_for({"cache_memory": {"max_entries": 100}})
    rng = random.Random(7)
    weights = [1 / (i + 1) for i in range(200)]  # Zipf-like: a few prompts dominate
    async with herd:
        for _ in range(5000):
            i = rng.choices(range(200), weights)[0]
            await herd.chat("mock", f"question {i}", temperature=0)
        stats = herd.cache.stats()["memory"] if herd.cache else {}
    total = stats["hits"] + stats["misses"]
    return {"hit_rate": stats["hits"] / total, "evictions": stats["evictions"]}


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    return None


async def main_async(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    out["baseline"] = await bench_direct(n)
    out["memory"] = await bench_tier("memory", {}, n)
    with tempfile.TemporaryDirectory() as tmp:
        # the signing key file goes to a throw-away data dir, not the user's
        os.environ["HERD_DATA_DIR"] = str(Path(tmp) / "data")
        db = str(Path(tmp) / "bench.sqlite3")
        disk_only = {"cache_memory": {"enabled": False}, "cache_disk": {"path": db}}
        out["disk"] = await bench_tier("disk", disk_only, n // 2)
        out["disk signed vs unsigned"] = await bench_signed_vs_unsigned_disk(tmp, n // 2)
        key = "T1mM0fQm2yXH3Rzw3b1bSg8u8Qv5m7P9l8b7v2n4k1c="  # throw-away bench key
        out["disk+fernet"] = await bench_tier(
            "disk",
            {
                "cache_memory": {"enabled": False},
                "cache_disk": {"path": db + ".enc", "encrypt_key_env": "HERD_BENCH_CACHE_KEY"},
            },
            n // 2,
            env={"HERD_BENCH_CACHE_KEY": key},
        )
        redis = start_redis(Path(tmp))
        if redis is None:
            out["redis"] = {"skipped": "redis-server not found — sudo apt-get install redis-server"}
        else:
            proc, port = redis
            try:
                out["redis"] = await bench_tier(
                    "redis",
                    {
                        "cache_memory": {"enabled": False},
                        "cache_redis": {"url": f"redis://127.0.0.1:{port}/0"},
                    },
                    n // 2,
                )
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    out["codec"] = bench_codec(n)
    out["coalesce"] = await bench_coalesce()
    out["hit_rate"] = await bench_hit_rate()
    direct = out["baseline"]["direct_p50_us"]
    for tier, target in TARGETS_US.items():
        row = out[tier]
        if "hit_p50_us" in row:
            row["target_us"] = target
            row["ok"] = row["hit_p50_us"] <= target
            row["hit_vs_direct_model_call"] = row["hit_p50_us"] / direct
            row["miss_over_hit"] = row["miss_p50_us"] / row["hit_p50_us"]
    co = out["coalesce"]
    co["ok"] = all(u == 1 for u in co["upstream_calls"]) and co["total_ms_median"] < 60
    return out


def render(data: dict[str, Any]) -> None:
    base = data["baseline"]
    print(f"python {data['python']}, {data['cpus']} CPUs")
    print(
        f"baseline: MockModel called directly p50 {base['direct_p50_us']:.1f} µs; "
        f"herd.chat with no cache tier p50 {base['no_cache_p50_us']:.1f} µs; "
        f"request_key p50 {base['key_p50_us']:.2f} µs"
    )
    print(
        f"{'tier':8} {'hit p50':>10} {'target':>8} {'miss p50':>10} {'hit/direct':>11} "
        f"{'miss/hit':>9}  ok"
    )
    for tier in TARGETS_US:
        row = data[tier]
        if "skipped" in row:
            print(f"{tier:8} skipped: {row['skipped']}")
            continue
        print(
            f"{tier:8} {row['hit_p50_us']:>8.1f}µs {row['target_us']:>6.0f}µs "
            f"{row['miss_p50_us']:>8.1f}µs {row['hit_vs_direct_model_call']:>10.2f}x "
            f"{row['miss_over_hit']:>8.2f}x  {'yes' if row['ok'] else 'NO'}"
        )
    sig = data["disk signed vs unsigned"]
    print(
        f"disk hit, interleaved: signed (HMAC-SHA256) p50 {sig['signed_hit_p50_us']:.1f} µs "
        f"vs unsigned checksum (before) {sig['unsigned_hit_p50_us']:.1f} µs: {sig['ratio']:.2f}x"
    )
    cod = data["codec"]
    print(
        f"entry codec alone (encode + decode): HMAC {cod['hmac_p50_us']:.2f} µs vs "
        f"checksum {cod['checksum_p50_us']:.2f} µs: {cod['ratio']:.2f}x"
    )
    enc = data["disk+fernet"]
    print(
        f"disk with Fernet encryption: hit p50 {enc['hit_p50_us']:.1f} µs, "
        f"miss p50 {enc['miss_p50_us']:.1f} µs"
    )
    co = data["coalesce"]
    print(
        f"coalescing: 100 identical calls on a 50 ms model -> upstream calls per round "
        f"{co['upstream_calls']}, total {co['total_ms_median']:.1f} ms median "
        f"(max {co['total_ms_max']:.1f}) — target 1 call, < 60 ms: "
        f"{'yes' if co['ok'] else 'NO'}"
    )
    hr = data["hit_rate"]
    print(
        f"hit rate (Zipf-like, 200 prompts, 5000 calls, L1 capped at 100 entries): "
        f"{hr['hit_rate']:.1%} ({hr['evictions']} evictions)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-n", type=int, default=4000, help="timed calls per L1 measurement")
    args = parser.parse_args()
    started = time.perf_counter()
    data = asyncio.run(main_async(args.n))
    data["bench_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render(data)
        print(f"({data['bench_seconds']} s)")


if __name__ == "__main__":
    main()
