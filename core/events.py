"""Typed events for the `track_event` hook: things that happen outside a chat call.

One hook for every kind (datasette's `track_event` pattern): a plugin looks at the
event's type and ignores the kinds it does not know, so new kinds never need a new
hook. Slotted dataclasses, built only when some plugin implements the hook
(`Herd.track` checks first).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ToolExecuted:
    """`herd.run_tools` ran one tool call (an OTel GenAI `execute_tool` operation).

    `arguments` and `result` are JSON text; a tracer records them only when content
    capture is on. `error_type` is set when the function raised or the arguments were
    invalid (then `result` is the error text sent back to the model)."""

    name: str
    call_id: str
    description: str
    arguments: str
    result: str
    start_ns: int
    end_ns: int
    error_type: str | None = None
    agent: str | None = None
    tenant: str | None = None


@dataclass(slots=True, frozen=True)
class EmbeddingsDone:
    """One upstream embeddings batch ended (an OTel GenAI `embeddings` operation)."""

    alias: str
    provider: str
    model: str
    count: int
    input_tokens: int
    start_ns: int
    end_ns: int
    error_type: str | None = None
    tenant: str | None = None


HerdEvent = ToolExecuted | EmbeddingsDone
