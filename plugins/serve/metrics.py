"""`GET /metrics`: Prometheus text format, by model and tenant with bounded labels.

prometheus-client is imported when the gateway starts (never at plugin load). With
`--workers N` every worker writes to one PROMETHEUS_MULTIPROC_DIR and any worker's
/metrics answers for all of them (prometheus-client's multiprocess mode), so a
scrape through the shared port sees the whole host, not one random worker.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.types import Metric

if TYPE_CHECKING:
    from modelherd import Herd

OTHER = "other"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
BREAKER_LEVEL = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class LabelLimiter:
    """The first `limit` distinct values of a label are kept; later ones become "other".

    Aliases come from the config and tenants from the keys, but `provider/model` pairs
    and a key store growing without bound must not blow up the series count.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value or value == "-":  # "no model / no tenant yet" is not a value
            return "-"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


class GatewayMetrics:
    """The gateway's instruments, plus an `on_metric` hook for what the pipeline reports."""

    __name__ = "serve-metrics"

    def __init__(self, label_limit: int) -> None:
        import prometheus_client as prom

        self.prom = prom
        prom.disable_created_metrics()  # the *_created series double the output for nothing
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # one registry per gateway (tests run several in a process); multiprocess mode
        # aggregates the workers' files at scrape time instead
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.models = LabelLimiter(label_limit)
        self.tenants = LabelLimiter(label_limit)
        self._children: dict[tuple[Any, ...], Any] = {}
        reg = self.registry
        self.requests = prom.Counter(
            "herd_gateway_requests",
            "HTTP requests answered, by route, model, tenant and status",
            ["route", "model", "tenant", "status"],
            registry=reg,
        )
        self.latency = prom.Histogram(
            "herd_gateway_request_duration_seconds",
            "Time from request received to last byte sent",
            ["route", "model", "tenant"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.first_token = prom.Histogram(
            "herd_gateway_time_to_first_chunk_seconds",
            "Streams: time to the first content chunk",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.tokens = prom.Counter(
            "herd_gateway_tokens",
            "Tokens in answers served (upstream calls only; cache hits count in cache_lookups)",
            ["model", "tenant", "type"],
            registry=reg,
        )
        self.cost = prom.Counter(
            "herd_gateway_cost",
            "Priced cost of upstream answers served, in `currency` (when the cost plugin priced them)",
            ["model", "tenant", "currency"],
            registry=reg,
        )
        self.cache = prom.Counter(
            "herd_gateway_cache_lookups",
            "Answers by cache tier (tier=miss: the model was called)",
            ["model", "tier"],
            registry=reg,
        )
        self.in_flight = prom.Gauge(
            "herd_gateway_in_flight",
            "Model requests being served now (the gateway's queue depth)",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.shed = prom.Counter(
            "herd_scheduler_shed",
            "Calls the load scheduler shed",
            ["model", "reason"],
            registry=reg,
        )
        self.queue_wait = prom.Histogram(
            "herd_scheduler_queue_wait_seconds",
            "Time calls waited in the scheduler's queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.load_state = prom.Gauge(
            "herd_load_state",
            "The scheduler's load state: 0 idle, 1 low, 2 medium, 3 high, 4 critical",
            registry=reg,
            multiprocess_mode="max",
        )
        self.breaker = prom.Gauge(
            "herd_breaker_state",
            "Circuit breaker per model: 0 closed, 1 half open, 2 open",
            ["model"],
            registry=reg,
            multiprocess_mode="max",
        )
        #: made at the first scrape of a herd whose breaker is shared (absent otherwise)
        self.breaker_shared: Any = None

    # ---- recorded by the routes ------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: prometheus-client checks and locks on every
        `labels()` call (~10 µs for a request's four); the label values are bounded by
        the limiters, so this dict is too."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def answered(self, route: str, model: str, tenant: str, status: int, seconds: float) -> None:
        model, tenant = self.models(model), self.tenants(tenant)
        self._child(self.requests, route, model, tenant, str(status)).inc()
        self._child(self.latency, route, model, tenant).observe(seconds)

    def served(self, model: str, tenant: str, response: Any) -> None:
        model, tenant = self.models(model), self.tenants(tenant)
        tier = response.cache_tier or "miss"
        self._child(self.cache, model, tier).inc()
        if response.cache_tier is None:
            usage = response.usage
            self._child(self.tokens, model, tenant, "input").inc(usage.input_tokens)
            self._child(self.tokens, model, tenant, "output").inc(usage.output_tokens)
        cost = getattr(response.usage, "cost", None)
        amount = getattr(cost, "amount", None)
        if isinstance(amount, int | float) and amount > 0 and response.cache_tier is None:
            self.cost.labels(model, tenant, str(getattr(cost, "currency", "USD"))[:8]).inc(amount)

    # ---- from the pipeline -----------------------------------------------------

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        name = metric.name
        if name == "herd.load_state":
            self.load_state.set(metric.value)
        elif name == "herd.scheduler.shed":
            attrs = metric.attributes
            self.shed.labels(
                self.models(attrs.get("herd.alias")), str(attrs.get("herd.reason", "-"))[:32]
            ).inc(metric.value)
        elif name == "herd.scheduler.queue_wait":
            self.queue_wait.labels(self.models(metric.attributes.get("herd.alias"))).observe(
                metric.value
            )

    # ---- the scrape --------------------------------------------------------------

    def refresh_breakers(self, herd: Herd) -> None:
        from modelherd.plugins.observability.alerts import alert_hooks

        hooks = alert_hooks(herd)
        breaker = getattr(hooks, "breaker", None) if hooks is not None else None
        if breaker is None:
            return
        # the shared state too: a circuit another replica opened is open here
        for alias, state in breaker.states().items():
            self.breaker.labels(self.models(alias)).set(BREAKER_LEVEL.get(state, 0.0))
        shared = getattr(hooks, "shared", None)
        if shared is not None:
            if self.breaker_shared is None:
                self.breaker_shared = self.prom.Gauge(
                    "herd_breaker_shared",
                    "1: circuit state shared with the other replicas through Redis; "
                    "0: Redis unreachable, each replica decides its circuits alone",
                    registry=self.registry,
                    multiprocess_mode="min",
                )
            self.breaker_shared.set(1.0 if shared.ok else 0.0)

    def render(self) -> tuple[bytes, str]:
        prom = self.prom
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
