"""The default engine: llama.cpp's own server, in-process, from the prebuilt xllamacpp wheel.

`xllamacpp.Server` owns `parallel` slots and batches every running call into one
decode step (continuous batching); its calls are thread-safe and release the GIL, so
each herd call blocks one worker thread and calls run together. Generation always
streams internally: the per-token callback is where a cancelled call stops (returning
True ends it), and where a streaming caller gets its text.

The server also listens on a random 127.0.0.1 port (xllamacpp always starts its HTTP
side); we give it a random API key that nobody is told, so no other local process can
use it. Its prompt RAM cache is off (`cache_ram_mib = 0`) so the memory a loaded model
holds is its weights plus its slots' KV cache, as `herd plan` and residency count it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Any

from .engine import CallCancelled, Completion, EngineLoad, EngineRequestError, TextSink, ToolDelta
from .tool_messages import tool_deltas


def import_xllamacpp() -> Any:
    """xllamacpp, with OpenMP's idle threads sleeping rather than spinning (unless the
    user chose otherwise): the wheel's OpenMP threads spin-wait at every barrier, and on
    a CPU shared with other work one descheduled thread stalls the rest — measured on
    this project's 2-core box under load: 1.5 tok/s spinning, 19 tok/s passive. libgomp
    reads the variable once, when the library loads, hence before the import."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import xllamacpp

    return xllamacpp


def gpu_devices() -> list[str]:
    """Names of the non-CPU devices this xllamacpp build can use (none on the PyPI wheel)."""
    xlc = import_xllamacpp()

    cpu = xlc.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_CPU
    return [str(d.get("name")) for d in xlc.get_device_info() if d.get("type") != cpu]


#: llama_pooling_type's MEAN: a chat GGUF declares no pooling of its own
_MEAN_POOLING = 1


def _flash_attn(xlc: Any, value: bool | None) -> Any:
    kinds = xlc.llama_flash_attn_type
    if value is None:
        return kinds.LLAMA_FLASH_ATTN_TYPE_AUTO
    return kinds.LLAMA_FLASH_ATTN_TYPE_ENABLED if value else kinds.LLAMA_FLASH_ATTN_TYPE_DISABLED


def _load_mode(xlc: Any, mmap: bool, mlock: bool) -> Any:
    modes = xlc.llama_load_mode
    if mmap and mlock:
        return modes.LLAMA_LOAD_MODE_MMAP_MLOCK
    if mlock:
        return modes.LLAMA_LOAD_MODE_MLOCK
    return modes.LLAMA_LOAD_MODE_MMAP if mmap else modes.LLAMA_LOAD_MODE_NONE


def build_params(xlc: Any, load: EngineLoad) -> Any:
    """CommonParams for one model: our settings (and the optimizer's placement) applied
    exactly. llama.cpp's own fit-to-memory is off: it would silently shrink n_ctx or
    the GPU layers; the provider checks memory before loading and says so instead."""
    opts = load.params
    params = xlc.CommonParams()
    params.model.path = str(load.path)
    params.n_parallel = load.parallel
    # the server splits n_ctx over its slots: each call gets the n_ctx it asked for
    params.n_ctx = int(opts["n_ctx"]) * load.parallel
    params.n_batch = int(opts["n_batch"])
    params.n_ubatch = min(512, int(opts["n_batch"]))
    if load.embedding:
        # a text is pooled in one physical batch: the longest text takes n_batch tokens
        params.n_ubatch = int(opts["n_batch"])
        params.embedding = True
        params.pooling_type = xlc.llama_pooling_type(
            load.pooling_type if load.pooling_type is not None else _MEAN_POOLING
        )
    params.n_gpu_layers = int(opts["n_gpu_layers"])
    if opts.get("n_threads"):
        params.cpuparams.n_threads = int(opts["n_threads"])
        params.cpuparams_batch.n_threads = int(opts["n_threads"])
    params.load_mode = _load_mode(xlc, bool(opts["use_mmap"]), bool(opts["use_mlock"]))
    if opts.get("type_k") is not None:
        params.cache_type_k = xlc.ggml_type(int(opts["type_k"]))
    if opts.get("type_v") is not None:
        params.cache_type_v = xlc.ggml_type(int(opts["type_v"]))
    if opts.get("tensor_split"):
        split = list(params.tensor_split)
        for i, share in enumerate(opts["tensor_split"][: len(split)]):
            split[i] = float(share)
        params.tensor_split = split
    params.flash_attn_type = _flash_attn(xlc, opts.get("flash_attn"))
    params.fit_params = False
    params.cont_batching = True
    params.cache_ram_mib = 0
    params.endpoint_metrics = True
    params.endpoint_slots = False
    params.ui = False
    params.n_threads_http = 1
    params.api_keys = [secrets.token_urlsafe(32)]
    params.verbosity = 0
    return params


class XllamacppEngine:
    """One loaded GGUF behind `xllamacpp.Server` (continuous batching over `slots`)."""

    name = "xllamacpp"

    def __init__(self, load: EngineLoad) -> None:
        xlc = import_xllamacpp()

        started = time.perf_counter()
        try:
            self.server: Any = xlc.Server(build_params(xlc, load))
        except RuntimeError as exc:  # "Failed to init server, please check the input params."
            raise EngineRequestError(str(exc)) from None
        self.load_s = time.perf_counter() - started
        self.slots = load.parallel
        self.slot_ctx = int(load.params["n_ctx"])
        self._busy = 0
        self._busy_lock = threading.Lock()

    def busy(self) -> int:
        return self._busy

    def generate(
        self, body: dict[str, Any], on_text: TextSink | None, cancel: threading.Event
    ) -> Completion:
        if cancel.is_set():
            raise CallCancelled
        parts: list[str] = []
        calls: list[ToolDelta] = []
        final: dict[str, Any] = {}
        finish: list[str | None] = [None]
        error: list[Any] = []

        def on_chunk(chunk: Any) -> bool:
            # runs in this thread, between two tokens; True stops the generation
            if not isinstance(chunk, dict):
                return cancel.is_set()
            if "error" in chunk:
                error.append(chunk["error"])
                return True
            for choice in chunk.get("choices") or ():
                finish[0] = choice.get("finish_reason") or finish[0]
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    parts.append(text)
                    if on_text is not None:
                        on_text(text)
                for piece in tool_deltas(delta.get("tool_calls")):
                    calls.append(piece)
                    if on_text is not None:
                        on_text(piece)
            if "usage" in chunk:
                final.update(chunk)
            return cancel.is_set()

        request = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with self._busy_lock:
            self._busy += 1
            busy_at_start = self._busy
        try:
            reply = self.server.handle_chat_completions(request, on_chunk)
        except ValueError as exc:  # a schema the grammar converter refuses, a bad field
            raise EngineRequestError(str(exc)) from None
        finally:
            with self._busy_lock:
                self._busy -= 1
        if isinstance(reply, dict) and "error" in reply:  # refused before generating
            error.append(reply["error"])
        if error:
            detail = error[0]
            raise EngineRequestError(
                str(detail.get("message", detail)) if isinstance(detail, dict) else str(detail)
            )
        if cancel.is_set():
            raise CallCancelled
        usage = final.get("usage") or {}
        timings = final.get("timings") or {}
        prompt = int(usage.get("prompt_tokens", 0))
        completion = int(usage.get("completion_tokens", 0))
        generation_ms = float(timings.get("prompt_ms", 0.0)) + float(
            timings.get("predicted_ms", 0.0)
        )
        return Completion(
            content="".join(parts),
            prompt_tokens=prompt,
            completion_tokens=completion,
            finish_reason=finish[0],
            generation_s=generation_ms / 1000,
            decode_tokens_per_s=float(timings.get("predicted_per_second", 0.0)),
            kv_slot_usage=min(1.0, (prompt + completion) / max(1, self.slot_ctx)),
            slots_busy=busy_at_start,
            tool_deltas=calls,
        )

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        with self._busy_lock:
            self._busy += 1
        try:
            reply = self.server.handle_embeddings({"input": texts, "encoding_format": "float"})
        except ValueError as exc:
            raise EngineRequestError(str(exc)) from None
        finally:
            with self._busy_lock:
                self._busy -= 1
        if not isinstance(reply, dict) or "error" in reply:
            detail = reply.get("error", reply) if isinstance(reply, dict) else reply
            raise EngineRequestError(
                str(detail.get("message", detail)) if isinstance(detail, dict) else str(detail)
            )
        data = sorted(reply.get("data") or (), key=lambda item: int(item.get("index", 0)))
        vectors = [list(item["embedding"]) for item in data]
        return vectors, int((reply.get("usage") or {}).get("prompt_tokens", 0))

    def metrics_text(self) -> str:
        """The server's Prometheus-format counters (tokens, decode calls, busy slots)."""
        return str(self.server.handle_metrics())

    def close(self) -> None:
        # dropping the last reference frees the model, its context and the HTTP thread;
        # a call still running holds its own reference until it returns
        self.server = None
