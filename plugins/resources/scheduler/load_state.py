"""The load state machine: signals in, one of idle/low/medium/high/critical out.

Pure and clock-injected, so tests drive it without sleeping. Each signal is turned
into a pressure in [0, 1+]; the state comes from the largest:

- utilisation: calls running / capacity (a full house alone is "high");
- queue: any waiting call means saturation (>= 0.85), rising with queue length;
- queue wait: p95 wait / the queue deadline, doubled (half the deadline = critical);
- latency: p95 latency / target latency x 0.8 (at the target = "high");
- memory: RAM in use from `memory_floor` (0) to `memory_high` (0.95 = critical).

Hysteresis: a state goes up at once, but comes down only after the pressure has
stayed below the current state's threshold minus `hysteresis` for `cooldown_s`,
so a noisy signal cannot make it flap. "idle" needs nothing running, nothing
queued and no call for `idle_after_s`.
"""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("idle", "low", "medium", "high", "critical")
LEVEL = {name: index for index, name in enumerate(STATES)}


@dataclass
class Signals:
    in_flight: int
    capacity: int
    queued: int
    max_queue: int
    p95_wait_s: float
    queue_timeout_s: float
    p95_latency_s: float
    target_latency_s: float | None
    memory_used: float  # fraction of RAM in use, 0..1
    seconds_since_call: float


@dataclass
class Thresholds:
    medium: float = 0.5
    high: float = 0.8
    critical: float = 0.95
    hysteresis: float = 0.1
    cooldown_s: float = 2.0
    idle_after_s: float = 30.0
    memory_floor: float = 0.6
    memory_high: float = 0.9


def pressure(s: Signals, t: Thresholds) -> float:
    """The largest of the normalised pressures (0 = nothing, >= critical = critical)."""
    values = [s.in_flight / max(1, s.capacity) * t.high]
    if s.in_flight >= s.capacity:
        values.append(t.high)
    if s.queued:
        values.append(0.85 + 0.15 * s.queued / max(1, s.max_queue))
    if s.queue_timeout_s > 0:
        values.append(2 * s.p95_wait_s / s.queue_timeout_s)
    if s.target_latency_s:
        values.append(s.p95_latency_s / s.target_latency_s * t.high)
    span = max(1e-6, t.memory_high - t.memory_floor)
    values.append(max(0.0, s.memory_used - t.memory_floor) / span * t.critical)
    return max(values)


def state_for(p: float, t: Thresholds) -> str:
    if p >= t.critical:
        return "critical"
    if p >= t.high:
        return "high"
    if p >= t.medium:
        return "medium"
    return "low"


def floor_of(state: str, t: Thresholds) -> float:
    return {"critical": t.critical, "high": t.high, "medium": t.medium}.get(state, 0.0)


class LoadStateMachine:
    """Holds the current state and applies hysteresis; `update` returns (old, new)."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.t = thresholds or Thresholds()
        self.state = "idle"
        self.pressure = 0.0
        self._calm_since: float | None = None

    def update(self, s: Signals, now: float) -> tuple[str, str]:
        t = self.t
        old = self.state
        self.pressure = p = pressure(s, t)
        if s.in_flight == 0 and s.queued == 0 and s.seconds_since_call >= t.idle_after_s:
            target = "idle"
        else:
            target = state_for(p, t)
        if LEVEL[target] > LEVEL[old] or (old == "idle" and target != "idle"):
            self.state = target
            self._calm_since = None
        elif LEVEL[target] < LEVEL[old]:
            # come down only after a calm spell well below the current floor
            calm = target == "idle" or p < floor_of(old, t) - t.hysteresis
            if not calm:
                self._calm_since = None
            elif self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= t.cooldown_s:
                self.state = target
                self._calm_since = None
        else:
            self._calm_since = None
        return old, self.state
