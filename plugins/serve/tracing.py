"""A SERVER span per gateway request that continues the client's W3C `traceparent`.

Only when the otel plugin is tracing this herd; then the herd call's own `chat …`
span (made by the otel plugin from the current OpenTelemetry context) becomes this
span's child, and the client's trace runs through the gateway into the model call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelherd import Herd


def tracer_for(herd: Herd) -> Any:
    """The otel plugin's tracer for this herd, or None when tracing is off."""
    try:
        from modelherd.plugins.observability.otel import _runtime
    except ImportError:
        return None
    runtime = _runtime(herd)
    return runtime.exporters.tracer if runtime is not None else None


@contextlib.contextmanager
def server_span(
    tracer: Any, name: str, headers: Mapping[str, str], attributes: dict[str, Any]
) -> Iterator[Any]:
    """Yield the span (or None with no tracer); the caller sets status attributes on it."""
    if tracer is None:
        yield None
        return
    from opentelemetry import context, trace
    from opentelemetry.trace import Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(carrier=dict(headers))
    span = tracer.start_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR))
        raise
    finally:
        status = span.attributes.get("http.response.status_code") if span.attributes else None
        if isinstance(status, int) and status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        context.detach(token)
        span.end()
