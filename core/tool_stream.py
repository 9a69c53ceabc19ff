"""Streamed tool calls: fragments put back together per call, as typed events.

Vendors cut a call up differently (OpenAI `delta.tool_calls[i]` fragments keyed by
index, Anthropic `content_block_start` / `input_json_delta` / `content_block_stop`,
Ollama whole calls in a chunk); each provider feeds a `ToolCallAssembler`, which
says what happened as `ToolCallStart` / `ToolCallDelta` / `ToolCallEnd` and holds the
complete calls for the final response. A stream that stops while a call is still
arriving is `IncompleteToolCallError`, never a half call returned as done.
`stream_events` is the kernel's side: the pipeline's items as typed events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from .errors import BadResponseError
from .tools import Tool, as_tools, check_calls, wire_call
from .types import (
    ChatRequest,
    ChatResponse,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)


class IncompleteToolCallError(BadResponseError):
    """A stream ended (or broke) in the middle of a tool call. `calls` holds what had
    arrived — partial, so never to be run; the call can be retried."""

    def __init__(self, message: str, calls: list[ToolCall]) -> None:
        super().__init__(message)
        self.calls = calls


class _Partial:
    __slots__ = ("call_id", "fragments", "name", "open")

    def __init__(self, call_id: str, name: str) -> None:
        self.call_id = call_id
        self.name = name
        self.fragments: list[str] = []
        self.open = True


class ToolCallAssembler:
    """Puts streamed tool calls back together, per call index, and says what happened
    as typed events (ToolCallStart / ToolCallDelta / ToolCallEnd).

    Vendors differ only in how they cut the call up: OpenAI sends the id and name in
    the first delta of an index and JSON fragments after it; Anthropic a
    `content_block_start` with id and name, `input_json_delta` fragments and a
    `content_block_stop`; Ollama whole calls. All three feed `feed` (and `end`)."""

    def __init__(self) -> None:
        self._calls: dict[int, _Partial] = {}
        #: the vendor's index -> ours, where they differ (see `feed`)
        self._moved: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def feed(
        self, index: int, call_id: str | None, name: str | None, fragment: str | None
    ) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        index = self._moved.get(index, index)
        partial = self._calls.get(index)
        if partial is not None and call_id and call_id != partial.call_id:
            # a new id at an index already in use: a server that numbers parallel calls
            # all 0 (LiteLLM's "Groq parallel calls merged"). It is a new call, not more
            # of the old one's arguments.
            ended = self.end(index)
            if ended is not None:
                events.append(ended)
            new_index = max(self._calls) + 1
            self._moved[index] = new_index
            index, partial = new_index, None
        if partial is None:
            partial = self._calls[index] = _Partial(call_id or f"call_{index}", name or "")
            events.append(ToolCallStart(index, partial.call_id, partial.name))
        elif name and not partial.name:  # a vendor that names the call in a later delta
            partial.name = name
        if fragment:
            partial.fragments.append(fragment)
            events.append(ToolCallDelta(index, fragment))
        return events

    def end(self, index: int) -> ToolCallEnd | None:
        partial = self._calls.get(index)
        if partial is None or not partial.open:
            return None
        partial.open = False
        return ToolCallEnd(index, self._call(partial))

    def end_all(self) -> list[ToolCallEnd]:
        ends = [self.end(index) for index in sorted(self._calls)]
        return [e for e in ends if e is not None]

    def calls(self) -> list[ToolCall]:
        """Every call, in index order (parsed JSON; schema checks are the pipeline's)."""
        return [self._call(self._calls[index]) for index in sorted(self._calls)]

    def open_calls(self) -> list[ToolCall]:
        return [self._call(p) for _, p in sorted(self._calls.items()) if p.open]

    def incomplete(self, vendor: str, alias: str) -> IncompleteToolCallError:
        """The error for a stream that stopped while a call was still arriving."""
        open_calls = self.open_calls()
        partial = open_calls or self.calls()
        names = ", ".join(f"'{c.name}'" for c in partial)
        if open_calls:
            where = (
                f"in the middle of the tool call {names} "
                f"(arguments so far: {partial[-1].raw_arguments[:80]!r})"
            )
        else:
            where = f"after the tool call {names}, before the answer's end"
        return IncompleteToolCallError(
            f"{vendor} stream for '{alias}' ended {where} — the partial answer was not "
            f"returned; the call can be retried",
            partial,
        )

    @staticmethod
    def _call(partial: _Partial) -> ToolCall:
        return wire_call(partial.call_id, partial.name, "".join(partial.fragments))


async def stream_events(items: AsyncIterator[Any], request: ChatRequest) -> AsyncIterator[Any]:
    """The pipeline's stream as typed events: text as TextDelta, each ToolCallEnd with
    its call checked against the tools, and — for an answer that arrived whole (a cache
    hit, a plugin's answer) — its calls announced as start / delta / end."""
    tools: tuple[Tool, ...] | None = None
    announced = False
    async for item in items:
        if type(item) is str:
            yield TextDelta(item)
            continue
        if isinstance(item, ToolCallEnd):
            announced = True
            if tools is None:
                tools = as_tools(request.options.get("tools"))
            yield ToolCallEnd(item.index, check_calls([item.call], tools)[0])
            continue
        calls = getattr(item, "tool_calls", None)
        if calls and not announced and isinstance(item, ChatResponse):
            for index, call in enumerate(calls):
                yield ToolCallStart(index, call.id, call.name)
                yield ToolCallDelta(index, call.raw_arguments or json.dumps(call.arguments))
                yield ToolCallEnd(index, call)
        yield item
