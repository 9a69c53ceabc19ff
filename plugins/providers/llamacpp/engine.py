"""What the provider needs from a llama.cpp binding, and the per-process registry of loaded ones.

An engine is blocking C++ called from worker threads. `generate` runs one chat
completion to the end (or until `cancel` is set, checked at every token) and calls
`on_text` with each piece of text as it is produced, and with each `ToolDelta` of a
tool call the engine's chat parser recognised (xllamacpp: the GGUF's jinja template). The two engines are
engine_xllamacpp.py (the default: llama.cpp's own server in-process, continuous
batching over `slots`) and engine_llama_cpp_python.py (opt-in: one call at a time).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ToolDelta:
    """A piece of one tool call as the engine streamed it (OpenAI's `delta.tool_calls[i]`
    shape): the first piece of an index carries the id and name, the rest pieces of the
    arguments' JSON."""

    index: int
    call_id: str | None
    name: str | None
    arguments: str | None


#: a piece of generated text or of a tool call, delivered from the engine's thread
TextSink = Callable[[str | ToolDelta], None]


@dataclass(slots=True)
class Completion:
    """One finished generation, as the engine reported it."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    #: seconds spent generating (not queued), from the engine's own timings
    generation_s: float
    #: tokens/s of the decode phase, from the engine's own timings (0 if unknown)
    decode_tokens_per_s: float = 0.0
    #: tokens of this call's slot in use at the end / the slot's context (0..1)
    kv_slot_usage: float = 0.0
    #: calls running or queued in the engine when this one started (itself included)
    slots_busy: int = 1
    #: the tool calls' pieces in the order they came (empty for a text answer)
    tool_deltas: list[ToolDelta] = field(default_factory=list)


@dataclass(slots=True)
class EngineLoad:
    """Everything that decides how a model is loaded (the registry key's source)."""

    path: Path
    params: dict[str, Any]
    parallel: int
    chat_format: str | None = None
    prefix_cache: bool = False
    #: an embeddings server (pooled vectors) instead of a chat one
    embedding: bool = False
    #: llama_pooling_type id for an embedding load (the file's own, else mean)
    pooling_type: int | None = None

    def key(self, engine: str) -> tuple[Any, ...]:
        items = tuple(sorted((k, str(v)) for k, v in self.params.items()))
        return (engine, str(self.path), self.parallel, items, self.embedding, self.pooling_type)


class Engine(Protocol):
    """A loaded model behind one binding."""

    name: str
    #: calls that can run at once (xllamacpp: its slots; llama-cpp-python: 1)
    slots: int
    load_s: float

    def generate(
        self, body: dict[str, Any], on_text: TextSink | None, cancel: threading.Event
    ) -> Completion:
        """Run one OpenAI-shaped chat completion `body`; raise CallCancelled if
        `cancel` was set before the end, EngineRequestError if the engine refused it."""
        ...

    def busy(self) -> int:
        """Calls running or queued inside the engine now."""
        ...

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Pooled vectors for `texts` (in order) and the prompt tokens they took, on an
        embedding load; EngineRequestError if the engine refused them."""
        ...

    def close(self) -> None:
        """Free the weights and the KV cache (waits for running calls to stop)."""
        ...


class CallCancelled(Exception):
    """The caller went away (timeout, cancelled task): generation stopped early."""


class EngineRequestError(Exception):
    """The engine refused a request (context too small, bad schema …); the text says why."""


@dataclass
class _Entry:
    engine: Engine
    users: int = 0


@dataclass
class EngineRegistry:
    """(engine, file, load params) -> loaded engine: a file loads once per process
    however many aliases name it, and is freed when the last alias lets go."""

    entries: dict[tuple[Any, ...], _Entry] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, key: tuple[Any, ...], load: Callable[[], Engine]) -> Engine:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                # loading under the lock: two aliases of one file must not load it twice
                entry = self.entries[key] = _Entry(load())
            entry.users += 1
            return entry.engine

    def release(self, engine: Engine) -> None:
        with self.lock:
            for key, entry in list(self.entries.items()):
                if entry.engine is engine:
                    entry.users -= 1
                    if entry.users > 0:
                        return
                    del self.entries[key]
                    break
        engine.close()

    def loaded(self) -> list[Engine]:
        with self.lock:
            return [entry.engine for entry in self.entries.values()]


REGISTRY = EngineRegistry()
