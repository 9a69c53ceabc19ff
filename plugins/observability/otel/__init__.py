"""OpenTelemetry traces and metrics (GenAI semantic conventions), exported over OTLP.

Off unless `[plugins.otel] enabled = true` or an OTLP endpoint is set in the
environment (see settings.py). Off, this module registers no per-call hook and
imports no OpenTelemetry package. On, `startup` builds this Herd's tracer and meter
providers and registers the per-call hooks (runtime.py).

Agents wrap their work in `agent_span(herd, "swarm")` so that the calls they make show
as children of one `invoke_agent swarm` span (docs/observability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl

if TYPE_CHECKING:
    from modelherd import Herd
    from modelherd.plugins.observability.otel.export import Exporters

log = logging.getLogger("modelherd.otel")

HOOKS_NAME = "otel-calls"
METRICS_NAME = "otel-metrics"


class _Runtime:
    """What startup opened for one Herd (kept on the hook object, found by name)."""

    def __init__(self, exporters: Exporters, pump: Any, hooks: Any, sink: Any) -> None:
        self.exporters = exporters
        self.pump = pump
        self.hooks = hooks
        self.sink = sink


def settings_for(herd: Herd) -> Any:
    """The resolved `[plugins.otel]` settings for this herd (validated; raises ConfigError)."""
    from modelherd.plugins.observability.otel.settings import parse_settings, resolve

    table = herd.plugin_settings("otel")
    return resolve(parse_settings(table, herd.config.source), herd.env)


def _quick_off(herd: Herd) -> bool:
    """True when tracing is surely off, decided without importing pydantic models."""
    table = herd.plugin_settings("otel")
    if table.get("enabled") is False:
        return True
    if table.get("enabled") is True:
        return False
    env = herd.env
    return not any(
        env.get(name)
        for name in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        )
    )


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("otel", _check_settings, "docs/observability.md")


def _check_settings(table: dict[str, Any], source: str) -> object:
    # settings.py (pydantic models) is imported only when there is a table to check:
    # loading the plugins (every command) does not pay for it
    from modelherd.plugins.observability.otel.settings import parse_settings

    return parse_settings(table, source)


@hookimpl
def startup(herd: Herd) -> None:
    if herd.pm.get_plugin(HOOKS_NAME) is not None:
        return  # a second start of the same herd: already wired
    if _quick_off(herd) and not herd.plugin_settings("otel"):
        return
    cfg = settings_for(herd)
    if not cfg.enabled:
        return
    from modelherd.plugins.observability.otel.export import Exporters
    from modelherd.plugins.observability.otel.runtime import OtelHooks, OtelMetricSink, OtelPump

    exporters = Exporters(cfg)
    pump = OtelPump(exporters.tracer, exporters.meter)
    hooks = OtelHooks(pump, cfg.capture_content)
    sink = OtelMetricSink(pump) if exporters.meter is not None else None
    hooks.runtime = _Runtime(exporters, pump, hooks, sink)
    if exporters.meter is not None:
        _resource_gauges(herd, exporters.meter)
    pump.start()
    herd.register_plugin(hooks, name=HOOKS_NAME)
    if sink is not None:
        herd.register_plugin(sink, name=METRICS_NAME)
    log.debug("tracing to %s, metrics to %s", cfg.traces_endpoint, cfg.metrics_endpoint)


def _resource_gauges(herd: Herd, meter: Any) -> None:
    """Export the resource sampler's latest reading as observable gauges.

    Read by the metric reader's thread at collection time: the sampler never calls
    on_metric, and a herd without the resource_monitor plugin exports none.
    """
    from modelherd.plugins.resources.monitor import GAUGES, sampler_for
    from opentelemetry.metrics import Observation

    def observe(key: str, scale: float) -> Any:
        def callback(options: Any) -> list[Any]:
            sampler = sampler_for(herd)
            value = sampler.latest.get(key) if sampler is not None else None
            return [] if value is None else [Observation(value * scale)]

        return callback

    for key, (name, unit, scale) in GAUGES.items():
        meter.create_observable_gauge(name, callbacks=[observe(key, scale)], unit=unit)


def _runtime(herd: Herd) -> _Runtime | None:
    hooks = herd.pm.get_plugin(HOOKS_NAME) if herd.plugins_loaded else None
    return getattr(hooks, "runtime", None) if hooks is not None else None


@hookimpl
def shutdown(herd: Herd) -> None:
    runtime = _runtime(herd)
    if runtime is None:
        return
    herd.unregister_plugin(runtime.hooks)
    if runtime.sink is not None:
        herd.unregister_plugin(runtime.sink)
    # hands over the last notes, then flushes spans and metrics (bounded by export_timeout_s)
    runtime.pump.stop()
    runtime.exporters.shutdown()


def force_flush(herd: Herd, timeout_s: float = 5.0) -> bool:
    """Export what is buffered now (tests, short scripts). False when tracing is off."""
    runtime = _runtime(herd)
    if runtime is None:
        return False
    runtime.pump.drain()
    runtime.exporters.force_flush(timeout_s)
    return True


def tracing_enabled(herd: Herd) -> bool:
    runtime = _runtime(herd)
    return runtime is not None and runtime.exporters.tracer is not None


class AgentSpan:
    """`with agent_span(herd, "swarm"):` / `async with ...` — see `agent_span`."""

    def __init__(self, herd: Herd, name: str, attributes: dict[str, Any]) -> None:
        self.herd = herd
        self.name = name
        self.attributes = attributes
        self.span: Any = None
        self._token: Any = None

    def __enter__(self) -> Any:
        runtime = _runtime(self.herd)
        if runtime is None or runtime.exporters.tracer is None:
            return None
        from opentelemetry import context, trace

        attrs = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": self.name,
            **self.attributes,
        }
        self.span = runtime.exporters.tracer.start_span(
            f"invoke_agent {self.name}", kind=trace.SpanKind.INTERNAL, attributes=attrs
        )
        # make it the current span: calls (and task-group children, which copy the
        # context when they start) made inside the block become its children
        self._token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.span is None:
            return
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        if exc is not None:
            self.span.set_attribute("error.type", type(exc).__name__)
            self.span.set_status(Status(StatusCode.ERROR))
        context.detach(self._token)
        self.span.end()
        self.span = None

    async def __aenter__(self) -> Any:
        await self.herd.start()  # the tracer exists once the herd has started
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def agent_span(herd: Herd, name: str, **attributes: Any) -> AgentSpan:
    """A parent span `invoke_agent {name}` for an agent run; a no-op when tracing is off.

        async with agent_span(herd, "swarm", **{"herd.members": 3}):
            async with anyio.create_task_group() as tg:
                for alias in members:
                    tg.start_soon(ask, alias)   # each herd.chat -> a child `chat {model}`

    Use `async with` (it starts the herd first, so the tracer exists); a plain `with`
    works once the herd has started. Nest another `agent_span` for a member that does
    more than one call. The value bound by `as` is the span, or None when off.
    """
    return AgentSpan(herd, name, dict(attributes))
