"""The call log's cost on the call path, and `herd logs` query time over 1M rows.

    python bench/logs.py                 # both figures
    python bench/logs.py --calls 20000 --rows 1000000

1. per-call cost of logging: `herd.chat` on a zero-latency MockModel through two herds
   built the same way (cost plugin on in both), one with the call log and one without,
   calls interleaved in the same run (which goes first alternates); the figure is the
   difference of the p50s
   (target <= 5 µs). The writer thread does its work (SQLite, JSON) off the call
   path, but it shares the GIL and the cores, so what it costs the caller is in this
   figure too.
2. `herd logs` over 1,000,000 generated rows (bounded: generated in this run, in a
   temp dir, deleted after): a filtered page of 20 (by model, by tenant + --since,
   errors only) through LogStore.query, median of 20 runs each (target < 200 ms),
   and `herd logs --model … --json` as a fresh process, for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelherd.plugins import cost
from modelherd.plugins.observability import logs
from modelherd.plugins.observability.logs import log_writer
from modelherd.plugins.observability.logs.store import COLUMNS, Filters, LogStore
from modelherd.testing import MockModel, make_herd


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def call_path(calls: int, workdir: Path) -> dict[str, float]:
    config = {"plugins": {"logs": {"path": str(workdir / "calls.db")}}}
    off = make_herd({"bench": MockModel()}, config=config, plugins=(cost,))
    on = make_herd({"bench": MockModel()}, config=config, plugins=(cost, logs))
    await off.start()
    await on.start()
    assert log_writer(on) is not None and log_writer(off) is None
    without: list[float] = []
    with_log: list[float] = []
    for i in range(calls + 1000):  # 1000 warm-up calls, discarded
        prompt = f"question {i}"
        # which herd goes first alternates: neither gets the other's warm caches
        first, second = (off, on) if i % 2 else (on, off)
        t0 = time.perf_counter_ns()
        await first.chat("bench", prompt)
        t1 = time.perf_counter_ns()
        await second.chat("bench", prompt)
        t2 = time.perf_counter_ns()
        if i >= 1000:
            a, b = (t1 - t0) / 1000, (t2 - t1) / 1000
            without.append(a if first is off else b)
            with_log.append(b if first is off else a)
    writer = log_writer(on)
    assert writer is not None
    writer.flush(60)
    written, dropped = writer.written, writer.dropped
    await off.aclose()
    await on.aclose()
    return {
        "off_p50_us": pct(without, 0.5),
        "on_p50_us": pct(with_log, 0.5),
        "added_p50_us": pct(with_log, 0.5) - pct(without, 0.5),
        "off_p99_us": pct(without, 0.99),
        "on_p99_us": pct(with_log, 0.99),
        "written": written,
        "dropped": dropped,
    }


def generate(path: Path, rows: int) -> float:
    """`rows` calls over 30 days: 20 aliases, 50 tenants, 5 agents, 2 % errors."""
    rng = random.Random(7)
    store = LogStore(path)
    start = time.time() - 30 * 86400
    step = 30 * 86400 / rows
    aliases = [f"model-{i}" for i in range(20)]
    tenants = [f"tenant-{i}" for i in range(50)]
    agents = [None, "swarm", "trading", "rbi", "copybot"]
    t0 = time.perf_counter()
    batch: list[tuple[tuple[object, ...], None, None]] = []
    for index in range(rows):
        error = rng.random() < 0.02
        row = dict.fromkeys(COLUMNS) | {
            "ts": start + index * step,
            "outcome": "error" if error else "ok",
            "tenant": rng.choice(tenants),
            "agent": rng.choice(agents),
            "alias": rng.choice(aliases),
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": rng.randint(10, 4000),
            "output_tokens": rng.randint(1, 800),
            "cache_read_tokens": 0,
            "latency_s": rng.random() * 3,
            "cost": None if error else rng.random() / 100,
            "currency": "USD",
            "saved": 0.0,
            "stream": 0,
            "error_type": "ProviderError" if error else None,
        }
        batch.append((tuple(row[c] for c in COLUMNS), None, None))
        if len(batch) == 50_000:
            store.append(batch)
            batch = []
    if batch:
        store.append(batch)
    store.close()
    return time.perf_counter() - t0


def query_times(path: Path) -> dict[str, float]:
    store = LogStore(path, create=False)
    cases = {
        "model": Filters(alias="model-7"),
        "tenant_since_7d": Filters(tenant="tenant-3", since=time.time() - 7 * 86400),
        "errors": Filters(errors=True),
        "agent_model": Filters(alias="model-3", agent="rbi"),
        "unfiltered": Filters(),
    }
    out: dict[str, float] = {}
    for name, filters in cases.items():
        runs = []
        for _ in range(20):
            t0 = time.perf_counter()
            rows = store.query(filters, 20)
            runs.append((time.perf_counter() - t0) * 1000)
            assert len(rows) == 20
        out[f"{name}_ms"] = statistics.median(runs)
    store.close()
    return out


def usage_time(path: Path) -> float:
    store = LogStore(path, create=False)
    t0 = time.perf_counter()
    rows = store.usage("model", Filters(since=time.time() - 7 * 86400))
    took = (time.perf_counter() - t0) * 1000
    assert len(rows) == 20
    store.close()
    return took


def cli_times(path: Path, workdir: Path) -> tuple[float, float]:
    """`herd logs --model … --json` as a fresh process, and `herd --version` beside it."""
    config = workdir / "plugins.toml"
    config.write_text(f'[plugins.logs]\npath = "{path}"\n')
    env = {**os.environ, "HERD_CONFIG": str(config)}
    runs: dict[str, list[float]] = {"logs": [], "version": []}
    for _ in range(3):
        for name, args in (
            ("logs", ["logs", "--model", "model-7", "--json"]),
            ("version", ["--version"]),
        ):
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "modelherd.cli", *args],
                capture_output=True,
                env=env,
                check=True,
            )
            runs[name].append((time.perf_counter() - t0) * 1000)
            assert done.stdout
    return statistics.median(runs["logs"]), statistics.median(runs["version"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path_cost = asyncio.run(call_path(args.calls, workdir))
        print(f"call path, {args.calls} calls each, interleaved:")
        print(
            f"  herd.chat p50 without log {path_cost['off_p50_us']:.1f} µs, with log "
            f"{path_cost['on_p50_us']:.1f} µs (p99 {path_cost['off_p99_us']:.1f} / "
            f"{path_cost['on_p99_us']:.1f} µs)"
        )
        added = path_cost["added_p50_us"]
        print(f"  logging adds {added:.2f} µs p50 (target <= 5 µs: {added / 5:.2f}x of it)")
        print(f"  rows written {path_cost['written']}, dropped {path_cost['dropped']}")
        db = workdir / "million.db"
        took = generate(db, args.rows)
        size = db.stat().st_size / 1024 / 1024
        print(f"generated {args.rows} rows in {took:.1f}s ({size:.0f} MiB)")
        for name, ms in query_times(db).items():
            print(f"  herd logs -n 20, filter {name[:-3]}: {ms:.2f} ms (target < 200 ms)")
        print(f"  herd usage --by model --since 7d (233k rows): {usage_time(db):.0f} ms")
        logs_ms, version_ms = cli_times(db, workdir)
        print(
            f"  `herd logs --model model-7 --json` as a process: {logs_ms:.0f} ms "
            f"(`herd --version` in the same run: {version_ms:.0f} ms)"
        )


if __name__ == "__main__":
    main()
