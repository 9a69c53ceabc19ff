"""An Anthropic event stream that keeps the server's pings.

The SDK's `AsyncStream` drops `event: ping` before anything sees it. A model that
thinks for a long time may send nothing else for a while, and the pipeline's idle
timeout counts any event from the server — so the pings are handed on, as events of
type "ping" the provider turns into a KeepAlive. Imported with the SDK (on first use).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from anthropic import AsyncStream
from anthropic._streaming import ServerSentEvent

_T = TypeVar("_T")


class PingKeepingStream(AsyncStream[_T]):
    async def _iter_events(self) -> AsyncIterator[ServerSentEvent]:
        async for sse in super()._iter_events():
            if sse.event == "ping":  # renamed, so the SDK's loop hands it on
                sse = ServerSentEvent(event="keepalive", data=sse.data or '{"type": "ping"}')
            yield sse


def stream_class(event_type: Any) -> Any:
    return PingKeepingStream[event_type]
