"""What observability costs per call, against the bare kernel in the same run.

    python bench/observability.py [--calls 5000]

Five herds on the same zero-latency MockModel, called in turn (interleaved, so machine
noise hits all alike), each figure the p50 of `herd.chat` minus the p50 of calling the
model directly:
  bare             the kernel with no plugin but the mock provider
  alerts           + the alerts plugin with its defaults (KPIs, circuit breaker, status file)
  otel             + OpenTelemetry tracing and metrics, exported over OTLP/HTTP to a real
                   receiver on 127.0.0.1 (tests/observability/otlp_receiver.py)
  otel+alerts      both
  all              + the audit log as well
Target (issue 6): tracing + metrics on <= 60 µs p50 overhead per call.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "observability"))

from otlp_receiver import OtlpReceiver  # noqa: E402

from modelherd.plugins import alerts, audit, otel, resource_monitor  # noqa: E402
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
        "otel+alerts": ({"otel": otel_cfg, "alerts": alerts_cfg, **quiet},
                        (otel, alerts, resource_monitor)),
        "all": ({"otel": otel_cfg, "alerts": alerts_cfg, "audit": audit_cfg, **quiet},
                (otel, alerts, audit, resource_monitor)),
    }
    return {
        name: make_herd({"bench": MockModel()}, config={"plugins": plugins}, plugins=mods)
        for name, (plugins, mods) in specs.items()
    }


async def run(calls: int) -> dict[str, dict[str, float]]:
    with OtlpReceiver() as receiver, tempfile.TemporaryDirectory() as tmp:
        herds = _herds(receiver.endpoint, Path(tmp))
        for herd in herds.values():
            await herd.start()
        model = MockModel()
        request = ChatRequest(alias="bench", provider="mock", model="mock-1",
                              messages=[Message(role="user", content="warm")])
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
        otel.force_flush(herds["otel"])
        spans = len(receiver.spans())
        for herd in herds.values():
            await herd.aclose()
    base = pct(direct, 0.5)
    out = {name: {"p50_us": pct(v, 0.5), "p99_us": pct(v, 0.99),
                  "overhead_p50_us": pct(v, 0.5) - base} for name, v in through.items()}
    out["_"] = {"direct_p50_us": base, "spans_received": spans}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(run(args.calls))
    extra = result.pop("_")
    print(f"per-call overhead, p50 over {args.calls} calls each "
          f"(direct MockModel call p50 {extra['direct_p50_us']:.1f} µs; "
          f"{extra['spans_received']:.0f} spans reached the loopback receiver from 'otel')")
    bare = result["bare"]["overhead_p50_us"]
    for name, row in result.items():
        ratio = row["overhead_p50_us"] / bare if bare > 0 else float("nan")
        print(f"  {name:<12} overhead p50 {row['overhead_p50_us']:7.1f} µs  "
              f"(p99 {row['p99_us']:7.1f} µs)  {ratio:4.2f}x bare")
    traced = result["otel"]["overhead_p50_us"]
    verdict = "OK" if traced <= 60 else "OVER"
    print(f"tracing+metrics on: {traced:.1f} µs p50 overhead per call, target <= 60 µs: {verdict}")


if __name__ == "__main__":
    main()
