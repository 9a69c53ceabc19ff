"""KPI rules and their alert state: fire once, resolve once, with hysteresis.

An "above" KPI (latency, error rate, CPU …) fires when its value goes over the
threshold and resolves only when it is back under `threshold * (1 - hysteresis)`;
a "below" KPI (throughput, quality) fires under the threshold and resolves at
`threshold * (1 + hysteresis)` (for a ratio such as quality: `threshold +
(1 - threshold) * hysteresis`, so 1.0 stays reachable). In between nothing changes,
so a value hovering at the line does not flap.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from modelherd.plugins.observability.alerts.live import OVERALL
from modelherd.plugins.observability.alerts.settings import AlertSettings

State = Literal["firing", "resolved"]
HOST = "host"


@dataclass
class Alert:
    """One alert event, handed to every notifier and to the `on_alert` hook."""

    kpi: str
    #: an alias, "*" for the whole herd, or "host" for resource KPIs
    scope: str
    state: State
    value: float | None
    threshold: float
    message: str
    #: wall-clock time the alert started firing, and of this event
    since: float = field(default_factory=time.time)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rule:
    kpi: str
    #: the key in a LiveStats snapshot (or in the resource sample)
    stat: str
    direction: Literal["above", "below"]
    threshold: float
    resolve_at: float
    #: "calls": per alias and herd-wide; "overall": herd-wide only; "host": resources
    scopes: Literal["calls", "overall", "host"]
    unit: str
    #: the snapshot key that counts the samples this KPI is judged on
    count_key: str = "calls"


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value:.2f}s"
    return f"{value:.2f} {unit}"


def build_rules(s: AlertSettings) -> list[Rule]:
    h = s.hysteresis
    rules: list[Rule] = []

    def above(kpi: str, stat: str, threshold: float | None, scopes: Any, unit: str) -> None:
        if threshold is not None:
            rules.append(Rule(kpi, stat, "above", threshold, threshold * (1 - h), scopes, unit))

    above("latency_mean", "latency_mean_s", s.latency_mean_s, "calls", "s")
    above("error_rate", "error_rate", s.error_rate, "calls", "ratio")
    above("cpu", "cpu_percent", s.cpu_percent, "host", "%")
    above("memory", "memory_percent", s.memory_percent, "host", "%")
    above("gpu", "gpu_percent", s.gpu_percent, "host", "%")
    above("gpu_memory", "gpu_memory_percent", s.gpu_memory_percent, "host", "%")
    if s.throughput_min_rps is not None:
        t = s.throughput_min_rps
        rules.append(Rule("throughput", "calls_per_s", "below", t, t * (1 + h), "overall", "req/s"))
    if s.quality_min is not None:
        q = s.quality_min
        rules.append(
            Rule(
                "quality",
                "quality",
                "below",
                q,
                q + (1 - q) * h,
                "calls",
                "ratio",
                count_key="validated",
            )
        )
    return rules


class KpiEngine:
    """Holds which alerts are firing; `evaluate` returns the transitions to notify."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.rules = build_rules(settings)
        self.active: dict[tuple[str, str], Alert] = {}

    def evaluate(
        self,
        snapshot: dict[str, dict[str, Any]],
        resources: dict[str, Any] | None,
        full_window: bool,
    ) -> list[Alert]:
        events: list[Alert] = []
        for rule in self.rules:
            if rule.scopes == "host":
                if resources:
                    self._judge(rule, HOST, resources.get(rule.stat), True, events)
                continue
            scopes = [OVERALL] if rule.scopes == "overall" else list(snapshot)
            for scope in scopes:
                stats = snapshot.get(scope, {})
                count = stats.get(rule.count_key) or 0
                if rule.kpi == "throughput":
                    # judged only over a full window: a herd that just started is not slow
                    self._judge(rule, scope, stats.get(rule.stat), full_window, events)
                elif count == 0 and (rule.kpi, scope) in self.active:
                    self._resolve(rule, scope, None, events, "no calls in the window")
                else:
                    enough = count >= self.settings.min_calls
                    self._judge(rule, scope, stats.get(rule.stat), enough, events)
        return events

    def _judge(
        self, rule: Rule, scope: str, value: float | None, enough: bool, events: list[Alert]
    ) -> None:
        if value is None or not enough:
            return
        key = (rule.kpi, scope)
        firing = key in self.active
        if rule.direction == "above":
            bad, good = value > rule.threshold, value <= rule.resolve_at
        else:
            bad, good = value < rule.threshold, value >= rule.resolve_at
        if bad and not firing:
            where = (
                "herd-wide"
                if scope == OVERALL
                else ("on this host" if scope == HOST else f"for '{scope}'")
            )
            word = "over" if rule.direction == "above" else "under"
            alert = Alert(
                rule.kpi,
                scope,
                "firing",
                value,
                rule.threshold,
                f"{rule.kpi} {where} is {_fmt(value, rule.unit)}, {word} the "
                f"{_fmt(rule.threshold, rule.unit)} threshold",
            )
            self.active[key] = alert
            events.append(alert)
        elif good and firing:
            self._resolve(rule, scope, value, events, "")

    def _resolve(
        self, rule: Rule, scope: str, value: float | None, events: list[Alert], why: str
    ) -> None:
        fired = self.active.pop((rule.kpi, scope))
        now_text = why or f"back to {_fmt(value or 0.0, rule.unit)}"
        events.append(
            Alert(
                rule.kpi,
                scope,
                "resolved",
                value,
                rule.threshold,
                f"{rule.kpi} for '{scope}' resolved: {now_text}",
                since=fired.since,
            )
        )
