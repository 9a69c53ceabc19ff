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
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from modelherd.errors import CircuitOpenError, RateLimitError

CircuitState = Literal["closed", "open", "half_open"]


def counts_against_health(error: BaseException) -> bool:
    """Whether a failed attempt says the model is unwell (see the module docstring)."""
    if isinstance(error, CircuitOpenError | RateLimitError):
        return False  # the breaker's own refusal; a 429 / 529 throttle (Retry-After rules)
    return bool(getattr(error, "fallback_ok", True))  # a bad request, quota, config: no


class Circuit:
    __slots__ = ("failures", "opened_at", "probe_started", "state")

    def __init__(self) -> None:
        self.state: CircuitState = "closed"
        self.failures: collections.deque[float] = collections.deque()
        self.opened_at = 0.0
        self.probe_started: float | None = None


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
        with self._lock:
            if circuit.state == "open" and now - circuit.opened_at >= self.cooldown_s:
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
        raise CircuitOpenError(
            f"circuit for '{alias}' is open after {self.threshold} failures in "
            f"{self.window_s:g}s (next probe in {retry_in:.0f}s) — add fallbacks = [...] to "
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
            if self.eligible is not None:
                allowed = self._eligible.get(alias)
                if allowed is None:
                    allowed = self._eligible[alias] = self.eligible(alias)
                if not allowed:
                    return
            circuit = self.circuits[alias] = Circuit()
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
            if self.eligible is not None and not self.eligible(alias):
                return False
            circuit = self.circuits.setdefault(alias, Circuit())
        with self._lock:
            if circuit.state != "closed":
                return False
            circuit.opened_at = self.clock()
            self._set(alias, circuit, "open", why)
        return True

    def _set(self, alias: str, circuit: Circuit, state: CircuitState, why: str) -> None:
        old = circuit.state
        circuit.state = state
        circuit.probe_started = None
        if state == "closed":
            circuit.failures.clear()
        self.on_change(alias, old, state, why)

    def describe(self) -> dict[str, Any]:
        return {
            alias: {"state": c.state, "failures": len(c.failures)}
            for alias, c in list(self.circuits.items())
        }
