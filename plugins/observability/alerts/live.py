"""Live call statistics over a sliding window: the numbers behind KPIs and `herd top`.

The call path only appends one tuple to a bounded deque (a few hundred nanoseconds);
all the arithmetic — means, percentiles, rates — happens in `snapshot()`, which the
background thread runs every second or so.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

#: record kinds
OK = 0  # a model answered (after_call, not from a cache)
HIT = 1  # a cache tier answered
FAIL = 2  # one attempt at a model failed (on_error, not final)
ERROR = 3  # a whole call failed (the final on_error): counts for the overall error rate

#: (time, alias, kind, latency_s, input_tokens, output_tokens, valid 1/0/-1)
Record = tuple[float, str, int, float, int, int, int]

OVERALL = "*"


@dataclass
class ModelLive:
    """Per-alias values that are not windowed: the last request's settings, in-flight."""

    inflight: int = 0
    temperature: float | None = None
    context_use: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class LiveStats:
    def __init__(
        self, window_s: float, max_records: int = 50_000, clock: Any = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self.records: collections.deque[Record] = collections.deque(maxlen=max_records)
        self.models: dict[str, ModelLive] = {}

    def model(self, alias: str) -> ModelLive:
        live = self.models.get(alias)
        if live is None:
            live = self.models[alias] = ModelLive()
        return live

    def add(
        self,
        alias: str,
        kind: int,
        latency: float = 0.0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        valid: int = -1,
    ) -> None:
        self.records.append(
            (self.clock(), alias, kind, latency, input_tokens, output_tokens, valid)
        )

    def _window(self, now: float) -> list[Record]:
        cutoff = now - self.window_s
        records = self.records
        while records and records[0][0] < cutoff:
            try:
                records.popleft()
            except IndexError:  # emptied by another thread meanwhile
                break
        return list(records)

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Scope ('*' or an alias) -> its KPIs over the window."""
        now = self.clock() if now is None else now
        span = max(min(self.window_s, now - self.started), 1e-3)
        groups: dict[str, list[Record]] = {OVERALL: []}
        for record in self._window(now):
            kind = record[2]
            # a model is judged by its attempts, the herd by its calls
            if kind != ERROR:
                groups.setdefault(record[1], []).append(record)
            if kind != FAIL:
                groups[OVERALL].append(record)
        for alias in list(self.models):  # list(): the call path may add one meanwhile
            groups.setdefault(alias, [])
        out: dict[str, dict[str, Any]] = {}
        for scope, records in groups.items():
            out[scope] = self._kpis(scope, records, span)
        return out

    def _kpis(self, scope: str, records: list[Record], span: float) -> dict[str, Any]:
        latencies = sorted(r[3] for r in records if r[2] == OK)
        ok = len(latencies)
        hits = sum(1 for r in records if r[2] == HIT)
        failed = sum(1 for r in records if r[2] in (FAIL, ERROR))
        calls = ok + hits + failed
        judged = [r[6] for r in records if r[2] == OK and r[6] >= 0]
        out_tokens = sum(r[5] for r in records if r[2] == OK)
        in_tokens = sum(r[4] for r in records if r[2] == OK)
        stats: dict[str, Any] = {
            "calls": calls,
            "calls_per_s": calls / span,
            "latency_mean_s": sum(latencies) / ok if ok else None,
            "latency_p50_s": _percentile(latencies, 0.50),
            "latency_p95_s": _percentile(latencies, 0.95),
            "error_rate": failed / calls if calls else None,
            "errors": failed,
            "tokens_per_s": out_tokens / span,
            "input_tokens": in_tokens,
            "output_tokens": out_tokens,
            "cache_hit_rate": hits / (ok + hits) if ok + hits else None,
            "quality": sum(judged) / len(judged) if judged else None,
            "validated": len(judged),
        }
        if scope == OVERALL:
            stats["inflight"] = sum(m.inflight for m in list(self.models.values()))
        else:
            live = self.models.get(scope)
            if live is not None:
                stats["inflight"] = live.inflight
                stats["temperature"] = live.temperature
                stats["context_use"] = live.context_use
        return stats
