"""The neutral messages and tools in Anthropic's Messages API wire format, and back.

System turns become the `system` parameter. Images become `image` blocks (`url`
sources for http(s) URLs, `base64` for bytes and files). An assistant turn's calls
become `tool_use` blocks; a `tool` turn becomes a `tool_result` block in a user turn,
and consecutive turns of one role merge (the API wants roles to alternate, and all
results for one turn's parallel calls in one user message). Tools go out as
`{name, description, input_schema}`; `tool_choice` as `{"type": "auto" | "any" |
"none" | "tool"}`, with `disable_parallel_tool_use` for `parallel_tool_calls=False`.
Streamed calls arrive as a `content_block_start` (type tool_use: id and name),
`input_json_delta` fragments and a `content_block_stop`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modelherd.errors import BadRequestError
from modelherd.tool_stream import ToolCallAssembler
from modelherd.tools import as_tool_choice, as_tools, wire_call
from modelherd.types import ImagePart, Message, StreamEvent, TextPart, ToolCall, ToolCallEnd

TOOL_OPTIONS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
_CHOICE = {"auto": "auto", "required": "any", "none": "none"}


def wire_messages(messages: Iterable[Message], alias: str) -> tuple[str, list[dict[str, Any]]]:
    """(the system text, the alternating user/assistant turns)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            system.append(m.text)
            continue
        role = "assistant" if m.role == "assistant" else "user"
        content = m.content if m.is_plain else _blocks(m)
        if turns and turns[-1]["role"] == role:  # the API wants turns to alternate
            last = turns[-1]
            if isinstance(last["content"], str) and isinstance(content, str):
                last["content"] += "\n\n" + content
            else:
                last["content"] = _as_blocks(last["content"]) + _as_blocks(content)
        else:
            turns.append({"role": role, "content": content})
    if not turns:
        raise BadRequestError(
            f"'{alias}' (anthropic) got only system messages — add a user message"
        )
    return "\n\n".join(system), turns


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _blocks(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text}]
    blocks: list[dict[str, Any]] = []
    content = m.content
    for part in [TextPart(text=content)] if isinstance(content, str) else content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        else:
            blocks.append({"type": "image", "source": _source(part)})
    blocks += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls
    ]
    return blocks


def _source(part: ImagePart) -> dict[str, Any]:
    if part.is_remote:
        return {"type": "url", "url": part.url}
    try:
        media_type, _ = part.load()
        return {"type": "base64", "media_type": media_type, "data": part.base64()}
    except ValueError as exc:
        raise BadRequestError(f"{exc} — fix the path or pass the image as data=") from None


def wire_tools(options: dict[str, Any]) -> dict[str, Any]:
    tools = as_tools(options.get("tools"))
    out: dict[str, Any] = {}
    if tools:
        out["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            if t.description
            else {"name": t.name, "input_schema": t.parameters}
            for t in tools
        ]
    choice = as_tool_choice(options.get("tool_choice"), tools)
    wire: dict[str, Any] | None = None
    if choice is not None:
        wire = {"type": _CHOICE[choice]} if choice in _CHOICE else {"type": "tool", "name": choice}
    if options.get("parallel_tool_calls") is False and tools:
        wire = wire or {"type": "auto"}
        if wire["type"] != "none":
            wire["disable_parallel_tool_use"] = True
    if wire is not None:
        out["tool_choice"] = wire
    return out


def call_from_block(block: Any) -> ToolCall:
    return wire_call(block.id, block.name, dict(block.input or {}))


class StreamCalls:
    """Anthropic numbers content blocks, text and calls alike; callers see calls
    numbered 0, 1, … among the calls."""

    def __init__(self) -> None:
        self.assembler = ToolCallAssembler()
        self._index: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self.assembler)

    def start(self, block_index: int, block: Any) -> list[StreamEvent]:
        if getattr(block, "type", None) != "tool_use":
            return []
        index = self._index[block_index] = len(self._index)
        return self.assembler.feed(index, block.id, block.name, None)

    def delta(self, block_index: int, partial_json: str) -> list[StreamEvent]:
        index = self._index.get(block_index)
        if index is None:
            return []
        return self.assembler.feed(index, None, None, partial_json)

    def stop(self, block_index: int) -> ToolCallEnd | None:
        index = self._index.get(block_index)
        return self.assembler.end(index) if index is not None else None
