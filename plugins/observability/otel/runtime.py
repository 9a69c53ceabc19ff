"""The per-call hooks of the otel plugin: one span per herd call, metrics from on_metric.

Registered by `modelherd.plugins.observability.otel` at startup only when OpenTelemetry is enabled.

Cheap on the call path, by design: the hooks only *note* what happened — start and
end times (time.time_ns), the parent OpenTelemetry context, attributes, events, and
each metric as a tuple — into deques. `OtelPump`, a daemon thread, turns the notes
into SDK spans (with those exact timestamps and parent) and instrument recordings
every 200 ms; the SDK's batch processor and metric reader then export them. The
SDK's own per-attribute validation and aggregation (~15 µs per metric point, ~30 µs
per span here) so run off the caller's path. `force_flush` drains the notes first.

A call's note lives in a ContextVar, not in `request.stash`: the kernel gives each
fallback attempt a fresh copy of the request (and of its context dict), but the whole
chain runs in the caller's task, so the ContextVar sees every attempt of one call.
The span starts at the first `before_call` (or, for a cache hit or a coalesced
follower, which skip `before_call`, at `after_call`) and ends at `after_call` or at
the final `on_error`. Its parent is the OpenTelemetry context current at the start,
so a call made inside `agent_span(...)` — also from tasks of an anyio task group,
which copy the context when they start — is that agent span's child.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.plugins.observability.otel.export import DURATION_BUCKETS, TOKEN_BUCKETS
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse, Metric

if TYPE_CHECKING:
    from modelherd import Herd

#: request options recorded as gen_ai.request.* attributes
_REQUEST_ATTRS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
}
#: set in an attempt's request stash: a second before_call with it is a retry
_ATTEMPTED = StashKey[bool]()
#: notes kept at most (a stalled pump drops the oldest rather than grow without end)
_MAX_NOTES = 100_000


class _Call:
    """One herd call in flight: what its span will say."""

    __slots__ = (
        "alias",
        "attempts",
        "attrs",
        "end_ns",
        "ended",
        "error",
        "events",
        "internal",
        "name",
        "parent",
        "primary",
        "start_ns",
    )

    def __init__(
        self, name: str, alias: str, attrs: dict[str, Any], parent: Any, start_ns: int
    ) -> None:
        self.name = name
        self.alias = alias
        self.primary = alias
        self.attrs = attrs
        self.parent = parent
        self.start_ns = start_ns
        self.end_ns = 0
        self.attempts = 0
        self.ended = False
        self.error = False
        #: an INTERNAL span (a tool run in this process), not a CLIENT call
        self.internal = False
        self.events: list[tuple[str, dict[str, Any], int]] = []


_CURRENT: ContextVar[_Call | None] = ContextVar("modelherd_otel_call", default=None)


def _messages_json(request: ChatRequest) -> str:
    return json.dumps([_message_parts(m) for m in request.messages], ensure_ascii=False)


def _message_parts(m: Any) -> dict[str, Any]:
    """One message in the GenAI conventions' shape: text, images (by media type, never
    their bytes), tool calls and tool answers as typed parts."""
    parts: list[dict[str, Any]] = []
    if m.role == "tool":
        parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": m.text})
    elif isinstance(m.content, str):
        if m.content or not m.tool_calls:
            parts.append({"type": "text", "content": m.content})
    else:
        for part in m.content:
            if part.type == "text":
                parts.append({"type": "text", "content": part.text})
            else:
                parts.append({"type": "blob", "modality": "image", "mime_type": part.media_type})
    for c in m.tool_calls:
        parts.append({"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments})
    return {"role": m.role, "parts": parts}


class OtelPump:
    """Turns the notes taken on the call path into SDK spans and metric points."""

    def __init__(self, tracer: Any, meter: Any, interval_s: float = 0.2) -> None:
        self.tracer = tracer
        self.meter = meter
        self.interval_s = interval_s
        self.spans: collections.deque[_Call] = collections.deque(maxlen=_MAX_NOTES)
        self.points: collections.deque[tuple[str, str, str, float, Any]] = collections.deque(
            maxlen=_MAX_NOTES
        )
        self._instruments: dict[str, Any] = {}
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if tracer is not None:
            from opentelemetry.trace import SpanKind, Status, StatusCode

            self._client = SpanKind.CLIENT
            self._internal = SpanKind.INTERNAL
            self._error_status = Status(StatusCode.ERROR)

    def drain(self) -> int:
        """Hand every pending note to the SDK now; returns how many."""
        done = 0
        with self._drain_lock:
            spans, points = self.spans, self.points
            while spans:
                call = spans.popleft()
                with contextlib.suppress(Exception):  # one odd note must not stop the rest
                    self._span(call)
                done += 1
            while points:
                name, kind, unit, value, attrs = points.popleft()
                with contextlib.suppress(Exception):
                    record = self._instruments.get(name) or self._instrument(name, kind, unit)
                    record(value, attrs)
                done += 1
        return done

    def _span(self, call: _Call) -> None:
        span = self.tracer.start_span(
            call.name,
            context=call.parent,
            kind=self._internal if call.internal else self._client,
            attributes=call.attrs,
            start_time=call.start_ns,
        )
        for name, attrs, at in call.events:
            span.add_event(name, attrs, timestamp=at)
        if call.error:
            span.set_status(self._error_status)
        span.end(end_time=call.end_ns)

    def _instrument(self, name: str, kind: str, unit: str) -> Any:
        meter = self.meter
        if kind == "histogram":
            advice: tuple[float, ...] | None = None
            if name == "gen_ai.client.operation.duration" or unit == "s":
                advice = DURATION_BUCKETS
            elif name == "gen_ai.client.token.usage":
                advice = TOKEN_BUCKETS
            record = meter.create_histogram(
                name, unit, explicit_bucket_boundaries_advisory=advice
            ).record
        elif kind == "gauge":
            record = meter.create_gauge(name, unit).set
        elif kind == "updown":
            record = meter.create_up_down_counter(name, unit).add
        else:
            record = meter.create_counter(name, unit).add
        self._instruments[name] = record
        return record

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.drain()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="herd-otel-pump", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self.drain()


class OtelHooks:
    """Span notes (when tracing is on) and the herd.requests / herd.inflight counters."""

    def __init__(self, pump: OtelPump, capture_content: bool) -> None:
        from opentelemetry import context

        self.pump = pump
        self.traces = pump.tracer is not None
        self.metrics = pump.meter is not None
        self.capture_content = capture_content
        self._get_context = context.get_current
        self._spans = pump.spans
        self._points = pump.points

    def _start(self, request: ChatRequest, start_ns: int | None = None) -> _Call:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": request.provider,
            "gen_ai.request.model": request.model,
            "herd.alias": request.alias,
        }
        options = request.options
        if options:
            for key, name in _REQUEST_ATTRS.items():
                value = options.get(key)
                if value is not None and type(value) in (int, float):
                    attrs[name] = value
        if request.tenant:
            attrs["herd.tenant"] = request.tenant
        if request.agent:
            attrs["gen_ai.agent.name"] = request.agent
        if self.capture_content:
            attrs["gen_ai.input.messages"] = _messages_json(request)
        call = _Call(
            f"chat {request.model or request.alias}",
            request.alias,
            attrs,
            self._get_context(),
            start_ns or time.time_ns(),
        )
        if self.metrics:
            self._points.append(
                ("herd.inflight", "updown", "{request}", 1, {"herd.alias": request.alias})
            )
        _CURRENT.set(call)
        return call

    def _active(self) -> _Call | None:
        call = _CURRENT.get()
        return call if call is not None and not call.ended else None

    def _end(self, call: _Call, outcome: str, error_type: str | None = None) -> None:
        call.ended = True
        call.end_ns = time.time_ns()
        _CURRENT.set(None)
        if self.traces:
            self._spans.append(call)
        if self.metrics:
            alias = {"herd.alias": call.alias}
            self._points.append(("herd.inflight", "updown", "{request}", -1, alias))
            attrs = {"herd.alias": call.alias, "herd.outcome": outcome}
            if error_type:
                attrs["error.type"] = error_type
            self._points.append(("herd.requests", "counter", "{request}", 1, attrs))

    @hookimpl(trylast=True)
    def before_call(self, request: ChatRequest, herd: Herd) -> None:
        call = self._active()
        stash = request.stash
        if call is None or (_ATTEMPTED not in stash and request.alias == call.primary):
            # a new call (a note left open by a call that ended without after_call or
            # on_error is dropped: a fallback attempt never asks the primary alias again)
            call = self._start(request)
        elif _ATTEMPTED in stash:
            call.events.append(("herd.retry", {"herd.attempt": call.attempts + 1}, time.time_ns()))
        else:
            call.events.append(
                (
                    "herd.fallback",
                    {"herd.from": call.alias, "herd.to": request.alias},
                    time.time_ns(),
                )
            )
            call.alias = request.alias
        stash[_ATTEMPTED] = True
        call.attempts += 1

    @hookimpl
    def after_call(
        self, request: ChatRequest, response: ChatResponse, herd: Herd, valid: bool | None
    ) -> None:
        call = self._active()
        if call is None:  # a cache hit or a coalesced follower: no before_call ran
            call = self._start(request, time.time_ns() - int(response.latency_s * 1e9))
        call.alias = request.alias
        attrs = call.attrs
        usage = response.usage
        attrs["gen_ai.response.model"] = response.model
        attrs["gen_ai.response.finish_reasons"] = (response.finish_reason,)
        attrs["gen_ai.usage.input_tokens"] = usage.input_tokens
        attrs["gen_ai.usage.output_tokens"] = usage.output_tokens
        attrs["herd.attempts"] = call.attempts or response.attempts
        attrs["herd.cache.hit"] = response.cache_tier is not None
        if response.cache_tier is not None:
            attrs["herd.cache.tier"] = response.cache_tier
        if response.fallback_from:
            attrs["herd.fallback_from"] = response.fallback_from
            attrs["herd.response.alias"] = response.alias
        if response.request_id:
            attrs["gen_ai.response.id"] = response.request_id
        if valid is not None:
            attrs["herd.valid"] = bool(valid)
        if self.capture_content:
            attrs["gen_ai.output.messages"] = json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": response.content}]
                        + [
                            {
                                "type": "tool_call",
                                "id": c.id,
                                "name": c.name,
                                "arguments": c.arguments,
                            }
                            for c in response.tool_calls
                        ],
                        "finish_reason": response.finish_reason,
                    }
                ],
                ensure_ascii=False,
            )
        self._end(call, "cache_hit" if response.cache_tier else "ok")

    @hookimpl
    def on_error(self, request: ChatRequest, error: BaseException, herd: Herd, final: bool) -> None:
        call = self._active()
        if call is None:
            if not final:
                return
            call = self._start(request)
        error_type = type(error).__name__
        if not final:
            call.events.append(
                (
                    "herd.attempt_failed",
                    {"error.type": error_type, "herd.alias": request.alias},
                    time.time_ns(),
                )
            )
            return
        call.alias = request.alias
        call.attrs["error.type"] = error_type
        call.attrs["herd.attempts"] = call.attempts
        call.error = True
        self._end(call, "error", error_type)

    @hookimpl
    def track_event(self, event: Any, herd: Herd) -> None:
        """`execute_tool` spans for tool runs, `embeddings` spans for embedding batches
        (OTel GenAI conventions); children of the span current where they ran."""
        if not self.traces:
            return
        from modelherd.events import EmbeddingsDone, ToolExecuted

        if isinstance(event, ToolExecuted):
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": event.name,
                "gen_ai.tool.call.id": event.call_id,
                "gen_ai.tool.type": "function",
            }
            if event.description:
                attrs["gen_ai.tool.description"] = event.description
            if event.agent:
                attrs["gen_ai.agent.name"] = event.agent
            if self.capture_content:
                attrs["gen_ai.tool.call.arguments"] = event.arguments
                attrs["gen_ai.tool.call.result"] = event.result
            call = _Call(
                f"execute_tool {event.name}", "", attrs, self._get_context(), event.start_ns
            )
            call.internal = True
        elif isinstance(event, EmbeddingsDone):
            attrs = {
                "gen_ai.operation.name": "embeddings",
                "gen_ai.provider.name": event.provider,
                "gen_ai.request.model": event.model,
                "herd.alias": event.alias,
                "herd.embeddings.count": event.count,
                "gen_ai.usage.input_tokens": event.input_tokens,
            }
            if event.tenant:
                attrs["herd.tenant"] = event.tenant
            call = _Call(
                f"embeddings {event.model or event.alias}",
                event.alias,
                attrs,
                self._get_context(),
                event.start_ns,
            )
        else:
            return
        if event.error_type:
            call.attrs["error.type"] = event.error_type
            call.error = True
        call.ended = True
        call.end_ns = event.end_ns
        self._spans.append(call)


class OtelMetricSink:
    """`on_metric` -> a note for the pump (the OpenTelemetry instrument is made on first use).

    Registered only when metrics are on: the kernel builds no Metric object at all when
    no plugin implements on_metric.
    """

    def __init__(self, pump: OtelPump) -> None:
        self._points = pump.points

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        self._points.append(
            (metric.name, metric.kind, metric.unit, metric.value, metric.attributes)
        )
