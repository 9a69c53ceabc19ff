"""Move `<think>…</think>` blocks out of an answer into `ChatResponse.reasoning`.

Reasoning models (DeepSeek-R1, Qwen3 …) served by Ollama or an OpenAI-compatible
server put their chain of thought inside the content. An unclosed `<think>` (the
answer hit max_tokens while still thinking) is reasoning to the end. The streaming
splitter holds back a possible partial tag at a chunk's end, so a tag split across
two chunks never leaks into the visible text.
"""

from __future__ import annotations

from modelherd.types import ReasoningDelta

OPEN = "<think>"
CLOSE = "</think>"


def split_think(text: str) -> tuple[str, str | None]:
    """(visible content, reasoning or None) for a complete answer."""
    if OPEN not in text:
        return text, None
    splitter = ThinkSplitter()
    visible = splitter.feed(text) + splitter.flush()
    return visible, splitter.reasoning


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkSplitter:
    """Feed chunks in order; `feed` returns the visible part, `reasoning` collects the rest."""

    __slots__ = ("_buf", "_in_think", "_parts", "_started", "_strip", "_taken")

    def __init__(self) -> None:
        self._buf = ""
        self._in_think = False
        self._parts: list[str] = []
        self._started = False
        #: drop the blank lines models put after </think>, even across chunks
        self._strip = False
        #: how many reasoning parts `take_reasoning` has handed out
        self._taken = 0

    @property
    def reasoning(self) -> str | None:
        if not self._started:
            return None
        return "".join(self._parts).strip()

    def take_reasoning(self) -> str:
        """The reasoning text fed since the last call (a stream hands it on as it comes)."""
        if self._taken == len(self._parts):
            return ""
        new = "".join(self._parts[self._taken :])
        self._taken = len(self._parts)
        return new

    def feed(self, chunk: str) -> str:
        if not self._buf and not self._in_think and not self._strip and "<" not in chunk:
            return chunk  # the common case: plain text, no tag in sight
        text = self._buf + chunk
        self._buf = ""
        if self._strip:
            text = text.lstrip()
            self._strip = not text
        out: list[str] = []
        while text:
            tag = CLOSE if self._in_think else OPEN
            index = text.find(tag)
            if index < 0:
                keep = _partial_suffix(text, tag)
                body, self._buf = (text[:-keep], text[-keep:]) if keep else (text, "")
                (self._parts if self._in_think else out).append(body)
                break
            (self._parts if self._in_think else out).append(text[:index])
            text = text[index + len(tag) :]
            if not self._in_think:
                self._started = True
            self._in_think = not self._in_think
            if not self._in_think:
                # models put blank lines after </think>; they may come in the next chunk
                text = text.lstrip()
                self._strip = not text
        return "".join(out)

    def stream_items(self, chunk: str) -> list[str | ReasoningDelta]:
        """One streamed chunk as the stream yields it: the `<think>` text it closed or
        continued as a ReasoningDelta first, then its visible text (empty parts left out)."""
        text = self.feed(chunk)
        thought = self.take_reasoning()
        items: list[str | ReasoningDelta] = [ReasoningDelta(thought)] if thought else []
        if text:
            items.append(text)
        return items

    def flush(self) -> str:
        """End of the answer: a held-back partial tag was plain text after all."""
        rest, self._buf = self._buf, ""
        if self._in_think:
            self._parts.append(rest)
            return ""
        return rest
