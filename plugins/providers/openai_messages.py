"""The neutral messages and tools in OpenAI's Chat Completions wire format, and back.

Images become `image_url` parts (an http(s) URL as given, bytes and files as data:
URLs); an assistant turn's calls become `tool_calls` with JSON-text arguments; a
`tool` turn becomes `{"role": "tool", "tool_call_id", "content"}`. Tools go out as
`{"type": "function", "function": {name, description, parameters}}` and
`tool_choice` as "auto" / "none" / "required" / `{"type": "function", ...}`.
Streamed calls arrive as `delta.tool_calls[i]` fragments keyed by `index`: the first
carries id and name, the rest pieces of the arguments' JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from modelherd.errors import BadRequestError
from modelherd.tool_stream import ToolCallAssembler
from modelherd.tools import Tool, as_tool_choice, as_tools, wire_call
from modelherd.types import ImagePart, Message, StreamEvent, TextPart, ToolCall

#: options this module turns into wire fields (the provider passes the rest through)
TOOL_OPTIONS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})


def wire_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.is_plain:
            out.append({"role": m.role, "content": m.content})
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text})
        else:
            entry: dict[str, Any] = {"role": m.role, "content": _content(m)}
            if m.tool_calls:
                entry["tool_calls"] = [_wire_call(c) for c in m.tool_calls]
                if not m.text and not m.images:
                    entry["content"] = None  # what the API sends back for a calls-only turn
            out.append(entry)
    return out


def _content(m: Message) -> str | list[dict[str, Any]]:
    content = m.content
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        else:
            if m.role != "user":
                raise BadRequestError(
                    f"OpenAI takes images only in user messages, not {m.role!r} ones — "
                    f"move the image into a user message"
                )
            parts.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
    return parts


def _image_url(part: ImagePart) -> str:
    try:
        return part.data_url()
    except ValueError as exc:  # an unreadable file
        raise BadRequestError(f"{exc} — fix the path or pass the image as data=") from None


def _wire_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {
            "name": call.name,
            "arguments": call.raw_arguments or json.dumps(call.arguments, ensure_ascii=False),
        },
    }


def wire_tools(options: dict[str, Any]) -> dict[str, Any]:
    """The `tools` / `tool_choice` / `parallel_tool_calls` fields for these call options."""
    tools = as_tools(options.get("tools"))
    out: dict[str, Any] = {}
    if tools:
        out["tools"] = [wire_tool(t) for t in tools]
    choice = as_tool_choice(options.get("tool_choice"), tools)
    if choice is not None:
        if choice in ("auto", "none", "required"):
            out["tool_choice"] = choice
        else:
            out["tool_choice"] = {"type": "function", "function": {"name": choice}}
    parallel = options.get("parallel_tool_calls")
    if parallel is not None and tools:
        out["parallel_tool_calls"] = bool(parallel)
    return out


def wire_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def calls_from_json(message: dict[str, Any]) -> list[ToolCall]:
    """The calls in a completion's `message` object (JSON as sent), arguments parsed."""
    calls = message.get("tool_calls") or []
    return [
        wire_call(c.get("id") or f"call_{i}", c["function"]["name"], c["function"].get("arguments"))
        for i, c in enumerate(calls)
        if isinstance(c, dict) and isinstance(c.get("function"), dict)
    ]


def feed_stream_calls(assembler: ToolCallAssembler, deltas: Any) -> list[StreamEvent]:
    """Events for one chunk's `delta.tool_calls` list (JSON as sent)."""
    events: list[StreamEvent] = []
    for position, delta in enumerate(deltas):
        if not isinstance(delta, dict):
            continue  # not a tool-call delta: nothing to assemble
        function = delta.get("function")
        if not isinstance(function, dict):
            function = {}
        index = delta.get("index")
        events += assembler.feed(
            index if isinstance(index, int) else position,
            delta.get("id"),
            function.get("name"),
            function.get("arguments"),
        )
    return events
