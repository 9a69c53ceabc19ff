"""The opt-in engine: llama-cpp-python, for users who built it with CUDA or Metal.

`llama_cpp.Llama` is not thread-safe and has no batching: one call runs at a time,
under the model's lock (`slots = 1`). A cancelled call stops at the next token: the
check sits in `Llama.eval`, plain Python that runs before every token (llama.cpp calls
logits processors from C, where a raised exception is only printed and generation
goes on).

Build it portable (a `-march=native` build can pick kernels, AMX for one, that a VM
advertises but cannot run: SIGILL): see docs/providers.md and `herd doctor`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .engine import CallCancelled, Completion, EngineLoad, EngineRequestError, TextSink


class _Stop(Exception):
    """Raised from Llama.eval (between tokens) to stop a generation nobody awaits."""


class LlamaCppPythonEngine:
    """One `llama_cpp.Llama` and the lock that serialises its use."""

    name = "llama-cpp-python"
    slots = 1

    def __init__(self, load: EngineLoad) -> None:
        from llama_cpp import Llama

        started = time.perf_counter()
        kwargs = {k: v for k, v in load.params.items() if v is not None}
        if load.chat_format:
            kwargs["chat_format"] = load.chat_format
        try:
            self.llama: Any = Llama(model_path=str(load.path), verbose=False, **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise EngineRequestError(str(exc)) from None
        self.load_s = time.perf_counter() - started
        self.prefix_cache = load.prefix_cache
        self.slot_ctx = int(load.params.get("n_ctx") or 2048)
        self.lock = threading.Lock()
        self._waiting = 0
        #: the cancel event of the call holding `lock` (None between calls)
        self._cancel: threading.Event | None = None
        evaluate = self.llama.eval

        def eval_unless_cancelled(tokens: Any) -> Any:
            if self._cancel is not None and self._cancel.is_set():
                raise _Stop
            return evaluate(tokens)

        self.llama.eval = eval_unless_cancelled

    def busy(self) -> int:
        return self._waiting

    def generate(
        self, body: dict[str, Any], on_text: TextSink | None, cancel: threading.Event
    ) -> Completion:
        self._waiting += 1
        try:
            with self.lock:
                if cancel.is_set():  # cancelled while queued for the model: do not start
                    raise CallCancelled
                if not self.prefix_cache:
                    self.llama.reset()
                self._cancel = cancel
                try:
                    return self._run(body, on_text)
                except _Stop:
                    raise CallCancelled from None
                finally:
                    self._cancel = None
        finally:
            self._waiting -= 1

    def _run(self, body: dict[str, Any], on_text: TextSink | None) -> Completion:
        waiting = self._waiting
        started = time.perf_counter()
        try:
            if on_text is None:
                out = self.llama.create_chat_completion(**body)
                choice = out["choices"][0]
                usage = out.get("usage") or {}
                content = choice["message"].get("content") or ""
                prompt = int(usage.get("prompt_tokens", 0))
                completion = int(usage.get("completion_tokens", 0))
                finish = choice.get("finish_reason")
            else:
                parts: list[str] = []
                finish = None
                for chunk in self.llama.create_chat_completion(**body, stream=True):
                    choice = chunk["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    text = choice.get("delta", {}).get("content")
                    if text:
                        parts.append(text)
                        on_text(text)
                content = "".join(parts)
                completion = len(parts)
                prompt = max(int(self.llama.n_tokens) - completion, 0)
        except ValueError as exc:  # a prompt longer than n_ctx, a bad schema
            raise EngineRequestError(str(exc)) from None
        elapsed = time.perf_counter() - started
        return Completion(
            content=content,
            prompt_tokens=prompt,
            completion_tokens=completion,
            finish_reason=finish,
            generation_s=elapsed,
            decode_tokens_per_s=completion / elapsed if elapsed > 0 else 0.0,
            kv_slot_usage=min(1.0, (prompt + completion) / max(1, self.slot_ctx)),
            slots_busy=waiting,
        )

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        # the provider sends embeddings to xllamacpp only (LlamaCppModel.can_embed)
        raise EngineRequestError("embeddings need the xllamacpp engine")

    def close(self) -> None:
        with self.lock:
            self.llama.close()
