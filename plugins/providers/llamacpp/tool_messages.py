"""Tools on the embedded engine: the neutral messages and tools in the OpenAI shape
llama.cpp's server takes, and its streamed tool-call pieces back.

llama.cpp renders `tools` and the conversation's calls and results with the GGUF's own
jinja template, then parses the model's output in that template's format (found by
comparing renders of the template, so any template that renders tool calls works, not
a fixed list) and constrains it with a grammar built from the tools' schemas. So the
wire shape is OpenAI's (openai_messages.py, reused here) with two differences the
server imposes:

- `tool_choice` is a word only ("auto" / "none" / "required"): the server reads a named
  `{"type": "function", ...}` choice as "auto", silently. A named choice is sent as
  that one tool with "required", which the grammar turns into a call of exactly it.
- content is text: the templates take a string (images are refused before this).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modelherd.plugins.providers.openai_messages import wire_messages, wire_tool
from modelherd.tools import as_tool_choice, as_tools
from modelherd.types import Message

from .engine import ToolDelta

#: the call options this module turns into wire fields
TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls")
#: the tool_choice words llama.cpp's server takes as they are
_WORDS = frozenset({"auto", "none", "required"})


def engine_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """The conversation as the engine takes it: text content; an assistant turn's calls
    as `tool_calls`, a tool result as `{"role": "tool", "tool_call_id", "content"}`."""
    messages = list(messages)
    if all(not m.tool_calls and m.tool_call_id is None for m in messages):
        return [{"role": m.role, "content": m.text} for m in messages]
    return wire_messages(
        m if isinstance(m.content, str) else m.model_copy(update={"content": m.text})
        for m in messages
    )


def engine_tools(options: dict[str, Any]) -> dict[str, Any]:
    """The `tools` / `tool_choice` / `parallel_tool_calls` fields for these call options."""
    tools = as_tools(options.get("tools"))
    if not tools:
        return {}
    choice = as_tool_choice(options.get("tool_choice"), tools)
    if choice is not None and choice not in _WORDS:
        # the server has no named choice: offer only that tool and require a call
        tools = tuple(t for t in tools if t.name == choice)
        choice = "required"
    out: dict[str, Any] = {"tools": [wire_tool(t) for t in tools]}
    if choice is not None:
        out["tool_choice"] = choice
    parallel = options.get("parallel_tool_calls")
    if parallel is not None:
        out["parallel_tool_calls"] = bool(parallel)
    return out


def tool_deltas(wire: Any) -> list[ToolDelta]:
    """A chunk's `delta.tool_calls` (the server's parser found a call) as ToolDeltas."""
    pieces: list[ToolDelta] = []
    for position, call in enumerate(wire or ()):
        function = call.get("function") or {}
        index = call.get("index")
        pieces.append(
            ToolDelta(
                index=int(index) if index is not None else position,
                call_id=call.get("id") or None,
                name=function.get("name") or None,
                arguments=function.get("arguments") or None,
            )
        )
    return pieces
