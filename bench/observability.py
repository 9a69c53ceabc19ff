"""What observability costs per call, against the bare kernel in the same run.

    python bench/observability.py [--calls 5000]

Five herds on the same zero-latency MockModel, called in turn (interleaved, so machine
noise hits all alike), each figure the p50 of `herd.chat` minus the p50 of calling the
model directly:
  bare             the kernel with no plugin but the mock provider
  alerts           + the alerts plugin with its defaults (KPIs, circuit breaker, status file)
  otel             + OpenTelemetry tracing and metrics, exported over OTLP/HTTP to a real
                   receiver on 127.0.0.1 (tests/observability/otlp_receiver.py, run in
                   its own process)
  otel+alerts      both
  all              + the audit log as well
Target (issue 6): tracing + metrics on <= 60 µs p50 overhead per call.
Then, one herd alive at a time, the CPU time per call of the whole process (all
threads: the work moved off the call path still costs CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RECEIVER = Path(__file__).resolve().parents[1] / "tests" / "observability" / "otlp_receiver.py"

from modelherd.plugins.observability import alerts, audit, otel  # noqa: E402
from modelherd.plugins.resources import monitor as resource_monitor  # noqa: E402
from modelherd.testing import MockModel, make_herd  # noqa: E402
from modelherd.types import ChatRequest, Message  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _herds(endpoint: str, tmp: Path) -> dict[str, Any]:
    alerts_cfg = {"status_dir": str(tmp / "status")}
    otel_cfg = {"enabled": True, "endpoint": endpoint, "export_interval_s": 1}
    audit_cfg = {"path": str(tmp / "audit.jsonl"), "max_bytes": 50 * 1024 * 1024}
    quiet = {"resource_monitor": {"enabled": False}}
    specs: dict[str, tuple[dict[str, Any], tuple[Any, ...]]] = {
        "bare": ({}, ()),
        "alerts": ({"alerts": alerts_cfg, **quiet}, (alerts, resource_monitor)),
        "otel": ({"otel": otel_cfg}, (otel,)),
        "otel+alerts": (
            {"otel": otel_cfg, "alerts": alerts_cfg, **quiet},
            (otel, alerts, resource_monitor),
        ),
        "all": (
            {"otel": otel_cfg, "alerts": alerts_cfg, "audit": audit_cfg, **quiet},
            (otel, alerts, audit, resource_monitor),
        ),
    }
    return {
        name: make_herd({"bench": MockModel()}, config={"plugins": plugins}, plugins=mods)
        for name, (plugins, mods) in specs.items()
    }


class _Receiver:
    """The loopback OTLP receiver in its own process, so its decoding is not counted."""

    def __enter__(self) -> _Receiver:
        self.proc = subprocess.Popen(
            [sys.executable, str(RECEIVER)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.endpoint = self.proc.stdout.readline().strip()
        return self

    def spans(self) -> int:
        import httpx

        return int(httpx.get(self.endpoint + "/count", timeout=10).text)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def run(calls: int) -> dict[str, dict[str, float]]:
    with _Receiver() as receiver, tempfile.TemporaryDirectory() as tmp:
        herds = _herds(receiver.endpoint, Path(tmp))
        for herd in herds.values():
            await herd.start()
        model = MockModel()
        request = ChatRequest(
            alias="bench",
            provider="mock",
            model="mock-1",
            messages=[Message(role="user", content="warm")],
        )
        direct: list[float] = []
        through: dict[str, list[float]] = {name: [] for name in herds}
        warmup = 500
        for i in range(calls + warmup):
            prompt = f"question {i}"
            t0 = time.perf_counter_ns()
            await model.chat(request)
            elapsed = time.perf_counter_ns() - t0
            if i >= warmup:
                direct.append(elapsed / 1000)
            for name, herd in herds.items():
                t1 = time.perf_counter_ns()
                await herd.chat("bench", prompt, temperature=0)
                elapsed = time.perf_counter_ns() - t1
                if i >= warmup:
                    through[name].append(elapsed / 1000)
        for name in ("otel", "otel+alerts", "all"):
            otel.force_flush(herds[name])
        spans = receiver.spans()
        for herd in herds.values():
            await herd.aclose()
        # CPU per call, all threads included: the span/metric pump, the exporters and the
        # audit writer work off the call path, but it is still work. One herd alive at a
        # time, so no other herd's threads are counted.
        cpu: dict[str, float] = {}
        gc.collect()
        for name in [*herds, *herds]:  # twice each; the lower figure is kept
            herd = _herds(receiver.endpoint, Path(tmp))[name]
            await herd.start()
            for i in range(200):
                await herd.chat("bench", f"warm {i}", temperature=0)
            c0 = time.process_time()
            for i in range(calls):
                await herd.chat("bench", f"cpu {i}", temperature=0)
            otel.force_flush(herd)
            await herd.aclose()
            spent = (time.process_time() - c0) / calls * 1e6
            cpu[name] = min(cpu.get(name, spent), spent)
    base = pct(direct, 0.5)
    out = {
        name: {
            "p50_us": pct(v, 0.5),
            "p99_us": pct(v, 0.99),
            "cpu_us": cpu[name],
            "overhead_p50_us": pct(v, 0.5) - base,
        }
        for name, v in through.items()
    }
    out["_"] = {"direct_p50_us": base, "spans_received": spans}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(run(args.calls))
    extra = result.pop("_")
    print(
        f"per-call overhead, p50 over {args.calls} calls each "
        f"(direct MockModel call p50 {extra['direct_p50_us']:.1f} µs; "
        f"{extra['spans_received']:.0f} spans reached the loopback receiver from the 3 "
        f"traced herds)"
    )
    bare = result["bare"]["overhead_p50_us"]
    for name, row in result.items():
        ratio = row["overhead_p50_us"] / bare if bare > 0 else float("nan")
        print(
            f"  {name:<12} overhead p50 {row['overhead_p50_us']:7.1f} µs  "
            f"(p99 {row['p99_us']:7.1f} µs)  {ratio:4.2f}x bare   "
            f"CPU per call, all threads {row['cpu_us']:6.1f} µs"
        )
    traced = result["otel"]["overhead_p50_us"]
    verdict = "OK" if traced <= 60 else "OVER"
    print(f"tracing+metrics on: {traced:.1f} µs p50 overhead per call, target <= 60 µs: {verdict}")


if __name__ == "__main__":
    main()
