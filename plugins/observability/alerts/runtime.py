"""The alerts plugin at run time: per-call bookkeeping, circuit breaker, KPI loop.

`AlertHooks` is registered by `modelherd.plugins.observability.alerts` at startup (when enabled).
On the call path it only counts: an append to the LiveStats deque, an in-flight
counter, and the breaker's dictionary lookup. A daemon thread evaluates the KPIs
every `eval_interval_s` and rewrites the `herd top` status file every
`status_interval_s`; notifications of KPI alerts come from that thread. Circuit
breaker alerts are sent where the breaker changes state (on the call path: log and
`on_alert` at once, the webhook from its own thread).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.plugins.observability.alerts.breaker import (
    CircuitBreaker,
    CircuitState,
    counts_against_health,
)
from modelherd.plugins.observability.alerts.kpi import Alert, KpiEngine
from modelherd.plugins.observability.alerts.live import (
    ERROR,
    FAIL,
    HIT,
    OK,
    OVERALL,
    LiveStats,
    ModelLive,
)
from modelherd.plugins.observability.alerts.notify import Notifier
from modelherd.plugins.observability.alerts.settings import AlertSettings
from modelherd.plugins.observability.alerts.shared import (
    SharedBreaker,
    SharedConfig,
    deployment_fingerprint,
)
from modelherd.plugins.observability.alerts.status import SCHEMA, write_status
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from modelherd import Herd

_INFLIGHT_ALIAS = StashKey[str]()
#: request options / model settings that give a model's context length
_CONTEXT_KEYS = ("n_ctx", "num_ctx", "context_length", "context_window", "max_context")


def _context_length(herd: Herd, alias: str, options: dict[str, Any]) -> int | None:
    for key in _CONTEXT_KEYS:
        value = options.get(key)
        if isinstance(value, int) and value > 0:
            return value
    try:
        model = herd.loaded_models().get(alias)
        settings = model.spec.settings if model is not None else herd.resolve(alias).settings
    except Exception:
        return None
    for key in _CONTEXT_KEYS:
        value = settings.get(key)
        if isinstance(value, int) and value > 0:
            return value
    # the provider's validated settings carry its defaults (llamacpp: n_ctx = 2048)
    parsed = getattr(model, "settings", None) if model is not None else None
    for key in _CONTEXT_KEYS:
        value = getattr(parsed, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(model, "context_length", None) if model is not None else None
    return value if isinstance(value, int) and value > 0 else None


class AlertHooks:
    def __init__(
        self,
        herd: Herd,
        settings: AlertSettings,
        notifier: Notifier,
        status_file: Path | None,
        resources: Any = None,
        shared: SharedConfig | None = None,
    ) -> None:
        self.herd = herd
        self.settings = settings
        self.notifier = notifier
        self.status_file = status_file
        #: a ResourceSampler (or anything with `.latest`); None = this herd's own sampler
        self.resources = resources
        self.stats = LiveStats(settings.window_s)
        self.engine = KpiEngine(settings)
        self.breaker = (
            CircuitBreaker(
                settings.breaker_failures,
                settings.breaker_window_s,
                settings.breaker_cooldown_s,
                self._circuit_changed,
                eligible=self._has_fallbacks if settings.breaker_needs_fallback else None,
            )
            if settings.breaker
            else None
        )
        #: the circuit state other replicas share through Redis (None: per process)
        self.shared = (
            SharedBreaker(
                shared,
                self.breaker,
                lambda: list(herd.config.models),
                self._deployment,
                self._shared_health,
            )
            if shared is not None and self.breaker is not None
            else None
        )
        if self.breaker is not None:
            self.breaker.shared = self.shared
        #: context length per alias: 0 = not looked up yet, -1 = unknown
        self._ctx_len: dict[str, int] = {}
        # bound once: the call path reads them without attribute chains
        self._models = self.stats.models
        self._append = self.stats.records.append
        self._clock = self.stats.clock
        self._circuits: dict[str, Any] = self.breaker.circuits if self.breaker else {}
        self._circuits_firing: dict[str, Alert] = {}
        #: firing while the shared breaker's Redis is unreachable
        self._shared_alert: Alert | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _deployment(self, alias: str) -> str:
        try:
            spec = self.herd.resolve(alias)
        except Exception:
            return "unresolved"
        return deployment_fingerprint(spec.provider, spec.model, spec.settings)

    def _shared_health(self, ok: bool, error: str | None) -> None:
        """Redis for the shared breaker went away or came back: an alert either way,
        so a breaker that stopped sharing is never silent."""
        if not ok and self._shared_alert is None:
            where = self.shared.config.safe_url() if self.shared is not None else "?"
            alert = Alert(
                "breaker_shared",
                OVERALL,
                "firing",
                None,
                0.0,
                f"circuit-breaker state is not shared: Redis at {where} is unreachable "
                f"({error}); this replica decides its circuits alone until it is back",
            )
            self._shared_alert = alert
            self.notifier.notify(alert)
        elif ok and self._shared_alert is not None:
            fired, self._shared_alert = self._shared_alert, None
            self.notifier.notify(
                Alert(
                    "breaker_shared",
                    OVERALL,
                    "resolved",
                    None,
                    0.0,
                    "circuit-breaker state is shared through Redis again",
                    since=fired.since,
                )
            )

    def breaker_status(self) -> dict[str, Any]:
        """The breaker as /readyz and `herd top` show it: each circuit, and whether its
        state is shared (and Redis answering) or per process."""
        if self.breaker is None:
            return {"enabled": False}
        shared = self.shared.describe() if self.shared is not None else {"mode": "process"}
        return {"enabled": True, "shared": shared, "circuits": self.breaker.describe()}

    def _has_fallbacks(self, alias: str) -> bool:
        try:
            return bool(self.herd.resolve(alias).fallbacks)
        except Exception:
            return False

    # ---- the call path -------------------------------------------------------

    # The three hooks below run on every call: plain dict lookups and one deque append,
    # no method calls that can be avoided (bench/observability.py measures them).

    @hookimpl(tryfirst=True)
    def before_call(self, request: ChatRequest, herd: Herd) -> None:
        alias = request.alias
        if alias in self._circuits:  # only a model that has failed has a circuit
            self.breaker.check(alias)  # type: ignore[union-attr]  # raises when open
        live = self._models.get(alias) or self.stats.model(alias)
        live.inflight += 1
        request.stash[_INFLIGHT_ALIAS] = alias

    @hookimpl
    def after_call(
        self, request: ChatRequest, response: ChatResponse, herd: Herd, valid: bool | None
    ) -> None:
        if response.cache_tier is not None:
            self._append((self._clock(), request.alias, HIT, 0.0, 0, 0, -1))
            return
        alias = response.alias or request.alias
        live = self._models.get(alias) or self.stats.model(alias)
        if live.inflight > 0:
            live.inflight -= 1
        usage = response.usage
        self._append(
            (
                self._clock(),
                alias,
                OK,
                response.latency_s,
                usage.input_tokens,
                usage.output_tokens,
                -1 if valid is None else (1 if valid else 0),
            )
        )
        temperature = request.options.get("temperature")
        if temperature is not None:
            live.temperature = temperature
        ctx_len = self._ctx_len.get(alias, 0)
        if ctx_len == 0:
            ctx_len = self._ctx_len[alias] = _context_length(herd, alias, request.options) or -1
        if ctx_len > 0:
            live.context_use = usage.input_tokens / ctx_len
        if alias in self._circuits:
            self.breaker.success(alias)  # type: ignore[union-attr]

    @hookimpl
    def on_error(self, request: ChatRequest, error: BaseException, herd: Herd, final: bool) -> None:
        alias = request.stash.pop(_INFLIGHT_ALIAS, None)
        if alias is not None:
            live = self._models.get(alias)
            if live is not None and live.inflight > 0:
                live.inflight -= 1
        if final:
            self.stats.add(request.alias, ERROR)
            return
        if not counts_against_health(error):
            # a 429 / 529 or a refused request is not the model failing: it counts neither
            # for the breaker nor for the model's error_rate (which opens the circuit via
            # recover_on); a call that fails in the end still counts herd-wide (ERROR)
            return
        self.stats.add(request.alias, FAIL)
        if self.breaker is not None:
            self.breaker.failure(request.alias, error)

    def _circuit_changed(self, alias: str, old: CircuitState, new: CircuitState, why: str) -> None:
        if new == "open" and alias not in self._circuits_firing:
            alert = Alert(
                "circuit_open",
                alias,
                "firing",
                None,
                0.0,
                f"circuit for '{alias}' opened: {why}; calls go to its fallbacks",
            )
            self._circuits_firing[alias] = alert
            self.notifier.notify(alert)
        elif new == "closed" and alias in self._circuits_firing:
            fired = self._circuits_firing.pop(alias)
            self.notifier.notify(
                Alert(
                    "circuit_open",
                    alias,
                    "resolved",
                    None,
                    0.0,
                    f"circuit for '{alias}' closed: {why}",
                    since=fired.since,
                )
            )

    # ---- the background loop -------------------------------------------------

    def evaluate(self) -> list[Alert]:
        """Judge every KPI now and notify the transitions; returns them."""
        with self._lock:
            snapshot = self.stats.snapshot()
            resources = self.resource_sample(averaged=True)
            full = self.stats.clock() - self.stats.started >= self.settings.window_s
            events = self.engine.evaluate(snapshot, resources, full)
        for alert in events:
            self.notifier.notify(alert)
        recover = self.settings.recover_on
        if self.breaker is not None and recover:
            for alert in events:
                if (
                    alert.state == "firing"
                    and alert.kpi in recover
                    and alert.scope not in (OVERALL, "host")
                ):
                    self.breaker.trip(alert.scope, f"{alert.kpi} alert: {alert.message}")
        return events

    def resource_sample(self, averaged: bool = False) -> dict[str, Any] | None:
        """The sampler's latest reading (for the KPIs: averaged over the KPI window)."""
        sampler = self.resources
        if sampler is None:
            from modelherd.plugins.resources.monitor import sampler_for

            sampler = sampler_for(self.herd)
        if sampler is None:
            return None
        if averaged and hasattr(sampler, "window_mean"):
            return sampler.window_mean(self.settings.window_s)
        return sampler.latest

    def active_alerts(self) -> list[Alert]:
        shared = [self._shared_alert] if self._shared_alert is not None else []
        return [*list(self.engine.active.values()), *list(self._circuits_firing.values()), *shared]

    def status(self) -> dict[str, Any]:
        """What `herd top` shows: the status file's content."""
        snapshot = self.stats.snapshot()
        overall = snapshot.pop(OVERALL)
        circuits = self.breaker.states() if self.breaker is not None else {}
        for alias, stats in snapshot.items():
            stats["circuit"] = circuits.get(alias, "closed")
        return {
            "schema": SCHEMA,
            "pid": os.getpid(),
            "time": time.time(),
            "started": time.time() - (self.stats.clock() - self.stats.started),
            "config": self.herd.config.source,
            "window_s": self.settings.window_s,
            "models": snapshot,
            "overall": overall,
            "resources": dict(self.resource_sample() or {}),
            "alerts": [a.to_dict() for a in self.active_alerts()],
            "breaker": self.breaker_status(),
        }

    def write_status(self) -> None:
        path = self.status_file
        if path is None:
            return
        try:
            write_status(path, self.status())
        except OSError as exc:  # an unwritable dir must not cost the herd its alerts
            self.status_file = None
            import logging

            logging.getLogger("modelherd.alerts").warning(
                "cannot write the `herd top` status file %s: %s — set [plugins.alerts] "
                "status_dir or HERD_STATUS_DIR to a writable directory",
                path,
                exc.strerror,
            )

    def _run(self) -> None:
        s = self.settings
        next_eval = time.monotonic() + s.eval_interval_s
        tick = min(s.eval_interval_s, s.status_interval_s)
        while not self._stop.wait(tick):
            try:
                if time.monotonic() >= next_eval:
                    next_eval += s.eval_interval_s
                    self.evaluate()
                self.write_status()
            except Exception:  # the monitor must outlive one bad tick
                import logging

                logging.getLogger("modelherd.alerts").debug("alerts tick failed", exc_info=True)

    def start(self) -> None:
        if self.shared is not None:
            self.shared.start()
        if self._thread is None:
            self.write_status()
            self._thread = threading.Thread(target=self._run, name="herd-alerts", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.shared is not None:
            self.shared.stop()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self.status_file is not None:
            with contextlib.suppress(OSError):
                self.status_file.unlink()
        self.notifier.close()


__all__ = ["AlertHooks", "ModelLive"]
