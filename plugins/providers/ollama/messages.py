"""The neutral messages and tools in Ollama's /api/chat wire format, and back.

Images go in a message's `images` list as base64 (Ollama takes no URLs: an http(s)
image is refused with a clear error rather than fetched behind the caller's back). An
assistant turn's calls become `tool_calls: [{"function": {name, arguments}}]` with
arguments as an object; a `tool` turn is `{"role": "tool", "content", "tool_name"}`.
Tools go out as `{"type": "function", "function": {...}}`. Ollama has no
`tool_choice`: "auto" is what it does, "none" sends no tools, and "required" or a
named tool is refused (it cannot be honoured; a silent "auto" would be a lie). Calls
come back whole, without ids: they are numbered `call_0`, `call_1`, … in order, and
streamed calls are announced in full (start, one delta, end) when their chunk
arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modelherd.errors import BadRequestError
from modelherd.tool_stream import ToolCallAssembler
from modelherd.tools import as_tool_choice, as_tools, wire_call
from modelherd.types import Message, StreamEvent, ToolCall

TOOL_OPTIONS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})


def wire_messages(messages: Iterable[Message], host: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.is_plain:
            out.append({"role": m.role, "content": m.content})
            continue
        entry: dict[str, Any] = {"role": m.role, "content": m.text}
        images = m.images
        if images:
            entry["images"] = [_base64(image, host) for image in images]
        if m.tool_calls:
            entry["tool_calls"] = [
                {"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
            ]
        if m.role == "tool" and m.name:
            entry["tool_name"] = m.name
        out.append(entry)
    return out


def _base64(image: Any, host: str) -> str:
    if image.is_remote:
        raise BadRequestError(
            f"Ollama at {host} takes images as bytes or files, not URLs ({image.url}) — "
            f"download it and pass ImagePart(data=...) or ImagePart(path=...)"
        )
    try:
        return str(image.base64())
    except ValueError as exc:
        raise BadRequestError(f"{exc} — fix the path or pass the image as data=") from None


def wire_tools(options: dict[str, Any], alias: str) -> dict[str, Any]:
    tools = as_tools(options.get("tools"))
    choice = as_tool_choice(options.get("tool_choice"), tools)
    if choice == "none" or not tools:
        return {}
    if choice not in (None, "auto"):
        raise BadRequestError(
            f"'{alias}' (ollama): Ollama has no tool_choice, so tool_choice={choice!r} "
            f"cannot be honoured — use 'auto' (or 'none'), or a provider that can force a call"
        )
    if options.get("parallel_tool_calls") is False:
        raise BadRequestError(
            f"'{alias}' (ollama): Ollama cannot be told to make one call at a time — drop "
            f"parallel_tool_calls=False"
        )
    return {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in tools
        ]
    }


def calls_from_message(message: Any, first: int = 0) -> list[ToolCall]:
    calls = getattr(message, "tool_calls", None) or []
    return [
        wire_call(f"call_{first + i}", c.function.name, dict(c.function.arguments or {}))
        for i, c in enumerate(calls)
    ]


def feed_stream_calls(assembler: ToolCallAssembler, message: Any) -> list[StreamEvent]:
    """Events for the whole calls one streamed chunk carries."""
    events: list[StreamEvent] = []
    first = len(assembler.calls())
    for offset, call in enumerate(calls_from_message(message, first)):
        index = first + offset
        events += assembler.feed(index, call.id, call.name, call.raw_arguments)
        end = assembler.end(index)
        if end is not None:
            events.append(end)
    return events
