"""The per-call hooks of the otel plugin: one span per herd call, metrics from on_metric.

Registered by `modelherd.plugins.otel` at startup only when OpenTelemetry is enabled.

A call's span lives in a ContextVar, not in `request.context`: the kernel gives each
fallback attempt a fresh copy of the request (and a fresh context dict), but the whole
chain runs in the caller's task, so the ContextVar sees every attempt of one call.
The span starts at the first `before_call` (or, for a cache hit or a coalesced
follower, which skip `before_call`, at `after_call`) and ends at `after_call` or at
the final `on_error`. Its parent is the current OpenTelemetry context, so a call made
inside `agent_span(...)` — also from tasks of an anyio task group, which copy the
context when they start — is that agent span's child.
"""

from __future__ import annotations

import json
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.types import ChatRequest, ChatResponse, Metric

from .otel_export import DURATION_BUCKETS, TOKEN_BUCKETS

if TYPE_CHECKING:
    from modelherd import Herd

#: request options recorded as gen_ai.request.* attributes
_REQUEST_ATTRS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
}


class _Call:
    """One herd call in flight: its span and where it has got to."""

    __slots__ = ("alias", "attempts", "ended", "span")

    def __init__(self, span: Any, alias: str) -> None:
        self.span = span
        self.alias = alias
        self.attempts = 0
        self.ended = False


_CURRENT: ContextVar[_Call | None] = ContextVar("modelherd_otel_call", default=None)


def _messages_json(request: ChatRequest) -> str:
    return json.dumps(
        [{"role": m.role, "parts": [{"type": "text", "content": m.content}]}
         for m in request.messages],
        ensure_ascii=False,
    )


class OtelHooks:
    """Spans (when `tracer` is set) and metric instruments (when `meter` is set)."""

    def __init__(self, tracer: Any, meter: Any, capture_content: bool) -> None:
        self.tracer = tracer
        self.meter = meter
        self.capture_content = capture_content
        self._requests: Any = None
        self._inflight: Any = None
        if meter is not None:
            self._requests = meter.create_counter(
                "herd.requests", "{request}", "calls made through herd.chat / herd.stream")
            self._inflight = meter.create_up_down_counter(
                "herd.inflight", "{request}", "calls in flight")
        if tracer is not None:
            from opentelemetry.trace import SpanKind, Status, StatusCode

            self._client = SpanKind.CLIENT
            self._error_status = Status(StatusCode.ERROR)

    # ---- spans ---------------------------------------------------------------

    def _start(self, request: ChatRequest, start_time: int | None = None) -> _Call:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": request.provider,
            "gen_ai.request.model": request.model,
            "herd.alias": request.alias,
        }
        options = request.options
        for key, name in _REQUEST_ATTRS.items():
            value = options.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[name] = value
        if request.tenant:
            attrs["herd.tenant"] = request.tenant
        if request.agent:
            attrs["gen_ai.agent.name"] = request.agent
        if self.capture_content:
            attrs["gen_ai.input.messages"] = _messages_json(request)
        span = None
        if self.tracer is not None:
            span = self.tracer.start_span(
                f"chat {request.model or request.alias}", kind=self._client,
                attributes=attrs, start_time=start_time)
        call = _Call(span, request.alias)
        if self._inflight is not None:
            self._inflight.add(1, {"herd.alias": request.alias})
        _CURRENT.set(call)
        return call

    def _active(self) -> _Call | None:
        call = _CURRENT.get()
        return call if call is not None and not call.ended else None

    def _end(self, call: _Call) -> None:
        call.ended = True
        _CURRENT.set(None)
        if self._inflight is not None:
            self._inflight.add(-1, {"herd.alias": call.alias})
        if call.span is not None:
            call.span.end()

    @hookimpl(trylast=True)
    def before_call(self, request: ChatRequest, herd: Herd) -> None:
        call = self._active()
        if call is None:
            call = self._start(request)
        elif call.span is not None:
            if request.alias != call.alias:
                call.span.add_event("herd.fallback", {"herd.from": call.alias,
                                                      "herd.to": request.alias})
                call.alias = request.alias
            else:
                call.span.add_event("herd.retry", {"herd.attempt": call.attempts + 1})
        call.attempts += 1

    @hookimpl
    def after_call(self, request: ChatRequest, response: ChatResponse, herd: Herd) -> None:
        call = self._active()
        if call is None:  # a cache hit or a coalesced follower: no before_call ran
            started = time.time_ns() - int(response.latency_s * 1e9)
            call = self._start(request, start_time=started)
        span = call.span
        if span is not None:
            usage = response.usage
            span.set_attributes({
                "gen_ai.response.model": response.model,
                "gen_ai.response.finish_reasons": (response.finish_reason,),
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "herd.attempts": call.attempts or response.attempts,
                "herd.cache.hit": response.cache_tier is not None,
            })
            if response.cache_tier is not None:
                span.set_attribute("herd.cache.tier", response.cache_tier)
            if response.fallback_from:
                span.set_attribute("herd.fallback_from", response.fallback_from)
                span.set_attribute("herd.response.alias", response.alias)
            if response.request_id:
                span.set_attribute("gen_ai.response.id", response.request_id)
            if "valid" in request.context:
                span.set_attribute("herd.valid", bool(request.context["valid"]))
            if self.capture_content:
                span.set_attribute("gen_ai.output.messages", json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": response.content}],
                      "finish_reason": response.finish_reason}], ensure_ascii=False))
        if self._requests is not None:
            self._requests.add(1, {"herd.alias": request.alias,
                                   "herd.outcome": "cache_hit" if response.cache_tier else "ok"})
        self._end(call)

    @hookimpl
    def on_error(self, request: ChatRequest, error: BaseException, herd: Herd) -> None:
        final = bool(request.context.get("final"))
        call = self._active()
        if call is None:
            if not final:
                return
            call = self._start(request)
        error_type = type(error).__name__
        span = call.span
        if not final:
            if span is not None:
                span.add_event("herd.attempt_failed", {"error.type": error_type,
                                                       "herd.alias": request.alias})
            return
        if span is not None:
            span.set_attribute("error.type", error_type)
            span.set_attribute("herd.attempts", call.attempts)
            span.set_status(self._error_status)
        if self._requests is not None:
            self._requests.add(1, {"herd.alias": request.alias, "herd.outcome": "error",
                                   "error.type": error_type})
        self._end(call)



class OtelMetricSink:
    """`on_metric` -> OpenTelemetry instruments, one per metric name, made on first use.

    Registered only when metrics are on: the kernel builds no Metric object at all when
    no plugin implements on_metric.
    """

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self._instruments: dict[str, Any] = {}

    def _instrument(self, metric: Metric) -> Any:
        meter = self.meter
        key = metric.name
        if metric.kind == "histogram":
            advice: tuple[float, ...] | None = None
            if metric.name == "gen_ai.client.operation.duration" or metric.unit == "s":
                advice = DURATION_BUCKETS
            elif metric.name == "gen_ai.client.token.usage":
                advice = TOKEN_BUCKETS
            inst = meter.create_histogram(metric.name, metric.unit,
                                          explicit_bucket_boundaries_advisory=advice)
            record = inst.record
        elif metric.kind == "gauge":
            record = meter.create_gauge(metric.name, metric.unit).set
        else:
            record = meter.create_counter(metric.name, metric.unit).add
        self._instruments[key] = record
        return record

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        record = self._instruments.get(metric.name)
        if record is None:
            record = self._instrument(metric)
        try:  # noqa: SIM105 - cheaper than contextlib.suppress on the hot path
            record(metric.value, metric.attributes)
        except Exception:  # on_metric must never raise into the call path
            pass
