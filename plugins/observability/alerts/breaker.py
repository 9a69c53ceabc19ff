"""A per-model circuit breaker: closed -> open -> half-open (one probe) -> closed.

Closed: every call goes through; failed attempts are remembered for `window_s`.
`failures` of them inside the window open the circuit. Open: `before_call` raises
`CircuitOpenError` (fallback_ok), so the kernel moves the call to the alias's next
fallback without touching the sick model. After `cooldown_s` the circuit is
half-open: exactly one call (the probe) goes through; its success closes the
circuit, its failure opens it again for another cooldown.

Only failures that say the model is unwell count. Not counted: requests the model
refused as invalid, quota and config errors (`fallback_ok = False`), and rate limits
and overload answers (HTTP 429 / 529, `RateLimitError`). A 429 is the vendor asking
this account to slow down, a 529 a moment of vendor-wide load; both say when to come
back (Retry-After), which the retry policy honours — and a long wait already sends
that one call to the fallback. Opening the circuit would instead lock the alias out
for `cooldown_s` whatever the vendor said, and its half-open probe would likely meet
the same limit and re-open it, long after the quota reset.

Shared between replicas (shared.py): with `shared` set, every local transition is
published to Redis and every replica's transitions arrive through `apply_remote`; the
half-open probe then needs the probe lock (`shared.probe_allowed`), so one replica
probes and the others keep failing over. The call path never waits on Redis.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from modelherd.errors import CircuitOpenError, RateLimitError

if TYPE_CHECKING:
    from modelherd.plugins.observability.alerts.shared import SharedBreaker

CircuitState = Literal["closed", "open", "half_open"]


def counts_against_health(error: BaseException) -> bool:
    """Whether a failed attempt says the model is unwell (see the module docstring)."""
    if isinstance(error, CircuitOpenError | RateLimitError):
        return False  # the breaker's own refusal; a 429 / 529 throttle (Retry-After rules)
    return bool(getattr(error, "fallback_ok", True))  # a bad request, quota, config: no


class Circuit:
    __slots__ = ("failures", "opened_at", "origin", "probe_started", "state", "why")

    def __init__(self) -> None:
        self.state: CircuitState = "closed"
        self.failures: collections.deque[float] = collections.deque()
        self.opened_at = 0.0
        self.probe_started: float | None = None
        #: the evidence of the last change ("5 failures in 30s, last ProviderError")
        self.why = ""
        #: None: this process decided the state; else the replica whose state this is
        self.origin: str | None = None


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        window_s: float,
        cooldown_s: float,
        on_change: Callable[[str, CircuitState, CircuitState, str], None],
        clock: Callable[[], float] = time.monotonic,
        eligible: Callable[[str], bool] | None = None,
    ) -> None:
        self.threshold = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.on_change = on_change
        self.clock = clock
        self.circuits: dict[str, Circuit] = {}
        #: which aliases get a breaker (asked once per alias, on its first failure)
        self.eligible = eligible
        self._eligible: dict[str, bool] = {}
        self._lock = threading.Lock()
        #: the Redis view other replicas share (None: this process decides alone)
        self.shared: SharedBreaker | None = None

    def state(self, alias: str) -> CircuitState:
        circuit = self.circuits.get(alias)
        return circuit.state if circuit is not None else "closed"

    def states(self) -> dict[str, CircuitState]:
        return {alias: c.state for alias, c in list(self.circuits.items())}

    def check(self, alias: str) -> None:
        """Before an attempt: raise CircuitOpenError unless the call may go through."""
        circuit = self.circuits.get(alias)
        if circuit is None or circuit.state == "closed":
            return
        now = self.clock()
        shared = self.shared
        with self._lock:
            # shared: only the replica holding the probe lock probes (no stampede)
            if (
                circuit.state == "open"
                and now - circuit.opened_at >= self.cooldown_s
                and (shared is None or shared.probe_allowed(alias, now))
            ):
                self._set(alias, circuit, "half_open", "cooldown over: one probe call")
            if circuit.state == "half_open":
                stale = (
                    circuit.probe_started is not None
                    and now - circuit.probe_started >= self.cooldown_s
                )
                if circuit.probe_started is None or stale:
                    circuit.probe_started = now  # this call is the probe
                    return
            retry_in = max(0.0, self.cooldown_s - (now - circuit.opened_at))
        where = f" by replica {circuit.origin}" if circuit.origin else ""
        probe = (
            f"next probe in {retry_in:.0f}s"
            if retry_in > 0 or shared is None
            else "a probe call is under way"
        )
        raise CircuitOpenError(
            f"circuit for '{alias}' is open{where} after {self.threshold} failures in "
            f"{self.window_s:g}s ({probe}) — add fallbacks = [...] to "
            f"[models.{alias}] so calls go elsewhere meanwhile, or fix the model "
            f"(`herd models --check`)",
            retry_after=retry_in,
        )

    def success(self, alias: str) -> None:
        circuit = self.circuits.get(alias)
        if circuit is None:
            return
        if circuit.state != "closed":
            with self._lock:
                self._set(alias, circuit, "closed", "probe call succeeded")
        circuit.failures.clear()

    def failure(self, alias: str, error: BaseException) -> None:
        if not counts_against_health(error):
            return
        now = self.clock()
        circuit = self.circuits.get(alias)
        if circuit is None:
            if not self.allowed(alias):
                return
            circuit = self.circuits.setdefault(alias, Circuit())
        if self.shared is not None and circuit.state == "closed":
            self.shared.failed(alias, type(error).__name__)  # counted across replicas too
        with self._lock:
            if circuit.state == "half_open":
                circuit.opened_at = now
                self._set(alias, circuit, "open", f"probe failed ({type(error).__name__})")
                return
            failures = circuit.failures
            failures.append(now)
            while failures and failures[0] < now - self.window_s:
                failures.popleft()
            if circuit.state == "closed" and len(failures) >= self.threshold:
                circuit.opened_at = now
                self._set(
                    alias,
                    circuit,
                    "open",
                    f"{len(failures)} failures in {self.window_s:g}s, last {type(error).__name__}",
                )

    def trip(self, alias: str, why: str) -> bool:
        """Open the circuit now (a KPI alert asked for recovery). True if it opened."""
        circuit = self.circuits.get(alias)
        if circuit is None:
            if not self.allowed(alias):
                return False
            circuit = self.circuits.setdefault(alias, Circuit())
        with self._lock:
            if circuit.state != "closed":
                return False
            circuit.opened_at = self.clock()
            self._set(alias, circuit, "open", why)
        return True

    def apply_remote(
        self, alias: str, state: CircuitState, opened_at: float, why: str, by: str
    ) -> bool:
        """Take another replica's decision (from Redis): open with its cool-down
        (`opened_at` on this process's clock), or closed. Not published again.
        True when the local circuit changed."""
        circuit = self.circuits.get(alias)
        if circuit is None:
            if state == "closed" or not self.allowed(alias):
                return False
            circuit = self.circuits.setdefault(alias, Circuit())
        with self._lock:
            if state == "closed":
                if circuit.state == "closed":
                    return False
                self._set(alias, circuit, "closed", f"{why} (replica {by})", publish=False)
                return True
            if circuit.state != "closed" and circuit.opened_at >= opened_at - 0.01:
                return False  # already open at least as long, or probing that same episode
            was_open = circuit.state == "open"
            circuit.opened_at = opened_at
            circuit.origin = by
            if was_open:
                circuit.why = why  # a later cool-down end: the same open state, longer
                return True
            self._set(alias, circuit, "open", f"{why} (replica {by})", publish=False)
            circuit.why = why
            return True

    def allowed(self, alias: str) -> bool:
        """Whether `alias` gets a breaker (`eligible`, asked once per alias)."""
        if self.eligible is None:
            return True
        allowed = self._eligible.get(alias)
        if allowed is None:
            allowed = self._eligible[alias] = self.eligible(alias)
        return allowed

    def _set(
        self, alias: str, circuit: Circuit, state: CircuitState, why: str, publish: bool = True
    ) -> None:
        old = circuit.state
        circuit.state = state
        circuit.probe_started = None
        circuit.why = why
        if state == "closed":
            circuit.failures.clear()
            circuit.origin = None
        elif publish and state == "open":
            circuit.origin = None  # decided here
        if publish and self.shared is not None:
            self.shared.local_change(alias, old, state, why, len(circuit.failures))
        self.on_change(alias, old, state, why)

    def describe(self) -> dict[str, Any]:
        now = self.clock()
        out: dict[str, Any] = {}
        for alias, c in list(self.circuits.items()):
            entry: dict[str, Any] = {"state": c.state, "failures": len(c.failures)}
            if c.state != "closed":
                entry["why"] = c.why
                entry["by"] = c.origin or "this process"
                entry["probe_in_s"] = round(max(0.0, self.cooldown_s - (now - c.opened_at)), 3)
            out[alias] = entry
        return out
