"""`ollama`: local models served by Ollama, through the official `ollama` client.

Names are normalised (`llama3.2` is `llama3.2:latest`); per-model keep_alive and the
runner options (num_ctx, num_gpu, num_thread …) come from `[models.<alias>]` or the
call; `<think>…</think>` is moved into `reasoning`; usage comes from
prompt_eval_count / eval_count and Ollama's timings become metrics
(`herd.ollama.load_duration` …, seconds). Failures follow the troubleshooting flow
users know: server down -> "start it with `ollama serve`", model missing ->
"run `herd pull NAME`". Admin calls (list, show, ps, pull, unload) live in
admin.py; the CLI (`herd pull`, `herd ollama …`) in cli.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.errors import (
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    ConnectionFailedError,
    HerdError,
    MissingDependencyError,
    ModelNotFoundError,
    ProviderError,
    RateLimitError,
)
from modelherd.plugins.providers.client_pool import ClientPool, pool_of
from modelherd.plugins.providers.errors import parse_retry_after, transport_error, unfinished
from modelherd.plugins.providers.ollama.messages import (
    calls_from_message,
    feed_stream_calls,
    wire_messages,
    wire_tools,
)
from modelherd.plugins.providers.think import ThinkSplitter, split_think
from modelherd.provider import Model, ProviderSettings, SamplingOptions
from modelherd.stash import StashKey
from modelherd.tool_stream import ToolCallAssembler
from modelherd.types import (
    Availability,
    ChatRequest,
    ChatResponse,
    FinishReason,
    Health,
    KeepAlive,
    ModelSpec,
    ReasoningDelta,
    StreamEvent,
    Usage,
)
from pydantic import ValidationError

if TYPE_CHECKING:
    from modelherd.embed import EmbedRequest
    from modelherd.types import EmbedResponse

#: yielded for a stream line with nothing to show: the server is alive, so the
#: pipeline's idle timeout restarts
ALIVE = KeepAlive()

DEFAULT_HOST = "http://127.0.0.1:11434"
#: this provider's client pool in each Herd's stash
_POOL = StashKey[ClientPool]()

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}

#: Ollama's timings (nanoseconds on the wire) -> metric names, seconds
DURATIONS = {
    "load_duration": "herd.ollama.load_duration",
    "prompt_eval_duration": "herd.ollama.prompt_eval_duration",
    "eval_duration": "herd.ollama.eval_duration",
    "total_duration": "herd.ollama.total_duration",
}


def normalize_name(name: str) -> str:
    """`llama3.2` -> `llama3.2:latest`; names with a tag (or a digest) are kept."""
    if not name:
        return name
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else f"{name}:latest"


def normalize_host(host: str | None) -> str:
    """`OLLAMA_HOST`-style values (`0.0.0.0`, `host:port`, a URL) -> a base URL."""
    host = (host or "").strip()
    if not host:
        return DEFAULT_HOST
    if "://" not in host:
        host = f"http://{host}"
    scheme, _, rest = host.partition("://")
    hostport, _, path = rest.partition("/")
    if hostport.startswith("0.0.0.0"):  # a bind address; clients connect locally
        hostport = "127.0.0.1" + hostport[len("0.0.0.0") :]
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434" if scheme == "http" else ":443"
    return f"{scheme}://{hostport}" + (f"/{path.rstrip('/')}" if path.strip("/") else "")


class OllamaSettings(ProviderSettings):
    """`[models.<alias>]` fields for provider = "ollama"."""

    #: the server; default OLLAMA_HOST, then http://127.0.0.1:11434
    host: str | None = None
    #: how long Ollama keeps the model loaded after a call ("5m", "1h", seconds, -1 forever)
    keep_alive: str | float | None = None
    num_ctx: int | None = None
    num_gpu: int | None = None
    num_thread: int | None = None
    #: ask reasoning models to think (True/False, or "low"/"medium"/"high")
    think: bool | str | None = None


class OllamaOptions(SamplingOptions):
    """Per-call options; an optimizer may set num_ctx / num_gpu / keep_alive in before_call."""

    num_ctx: int | None = None
    num_gpu: int | None = None
    num_thread: int | None = None
    num_batch: int | None = None
    keep_alive: str | float | None = None
    think: bool | str | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


#: OllamaOptions fields that go into Ollama's `options` object (runner parameters)
_RUNNER = (
    "temperature",
    "seed",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "num_ctx",
    "num_gpu",
    "num_thread",
    "num_batch",
)


class OllamaModel(Model):
    provider = "ollama"
    description = "local models served by Ollama (official client)"
    can_stream = True
    supports_schema = True
    supports_tools = True
    can_embed = True
    is_local = True
    Settings = OllamaSettings

    def __init__(self, spec: ModelSpec, herd: Any) -> None:
        super().__init__(spec, herd)
        settings = self.settings
        assert isinstance(settings, OllamaSettings)
        env: Mapping[str, str] = getattr(herd, "env", None) or os.environ
        self.host = normalize_host(settings.host or env.get("OLLAMA_HOST"))
        self.name = normalize_name(spec.model)

    def __repr__(self) -> str:
        return f"<OllamaModel alias={self.spec.alias!r} model={self.name!r} host={self.host!r}>"

    @classmethod
    def availability(cls, spec: ModelSpec, env: Mapping[str, str]) -> Availability:
        """No network here: whether the server runs is a live check (`health`)."""
        if importlib.util.find_spec("ollama") is None:
            return Availability(
                ok=False,
                reason="the ollama package is not installed",
                fix='pip install "modelherd[ollama]"',
            )
        cls.parse_settings(spec)
        if not spec.model:
            return Availability(
                ok=False,
                reason="no model name",
                fix=f'set model = "llama3.2" in [models.{spec.alias}]',
            )
        return Availability(ok=True)

    # ---- client ----------------------------------------------------------------

    def client(self) -> Any:
        return pool_of(self.herd, _POOL).get(self.host, self._new_client, self)

    async def prepare(self) -> None:
        """Import the client (and httpx) in a worker thread, then build this loop's
        client — before the first attempt's timeout starts, off the event loop."""
        import anyio

        await anyio.to_thread.run_sync(_import_client)
        self.client()

    def _new_client(self) -> Any:
        try:
            import ollama
        except ImportError:
            raise MissingDependencyError("ollama", "ollama", "the ollama provider") from None
        from modelherd.plugins.providers.ollama.status import raise_for_status

        # the hook keeps the headers of an error answer (Retry-After) that the client drops
        return ollama.AsyncClient(host=self.host, event_hooks={"response": [raise_for_status]})

    # ---- request ---------------------------------------------------------------

    def kwargs(self, request: ChatRequest) -> dict[str, Any]:
        opts = self.parse_options(OllamaOptions, request)
        settings = self.settings
        assert isinstance(settings, OllamaSettings)
        name = normalize_name(request.model) if request.model else self.name
        if not name:
            raise ConfigError(f'[models.{request.alias}] has no model — set model = "llama3.2"')
        runner: dict[str, Any] = {}
        for key in ("num_ctx", "num_gpu", "num_thread"):  # alias defaults, the call wins
            value = getattr(settings, key)
            if value is not None:
                runner[key] = value
        for key in _RUNNER:
            value = getattr(opts, key)
            if value is not None:
                runner[key] = value
        if opts.max_tokens is not None:
            runner["num_predict"] = opts.max_tokens
        if opts.stop is not None:
            runner["stop"] = [opts.stop] if isinstance(opts.stop, str) else opts.stop
        kwargs: dict[str, Any] = {
            "model": name,
            "messages": wire_messages(request.messages, self.host),
        }
        if opts.tools is not None or opts.tool_choice is not None:
            kwargs.update(wire_tools(request.options, request.alias))
        if runner:
            kwargs["options"] = runner
        if opts.response_format is not None:
            schema = request.json_schema
            if schema is not None and isinstance(schema.get("json_schema"), dict):
                schema = schema["json_schema"].get("schema", schema)  # OpenAI's form
            kwargs["format"] = schema if schema is not None else "json"
        keep_alive = opts.keep_alive if opts.keep_alive is not None else settings.keep_alive
        if keep_alive is not None:
            kwargs["keep_alive"] = keep_alive
        think = opts.think if opts.think is not None else settings.think
        if think is not None:
            kwargs["think"] = think
        return kwargs

    # ---- calls -----------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        kwargs = self.kwargs(request)
        try:
            reply = await self.client().chat(**kwargs, stream=False)
            message = reply.message
            content, reasoning = split_think(message.content or "")
            calls = calls_from_message(message)
            response = ChatResponse(
                content=content,
                model=reply.model or kwargs["model"],
                provider=self.provider,
                alias=request.alias,
                usage=_usage(reply),
                finish_reason=_finish(reply.done_reason, calls),
                reasoning=message.thinking or reasoning,
                provider_metrics=_durations(reply),
                tool_calls=calls,
            )
        except Exception as exc:
            error = await self.map_error(exc, request, kwargs["model"])
        else:
            if reply.done:
                return response
            # a 200 that is not the final answer: never complete, never cached
            error = unfinished("Ollama", self.host, request.alias, '"done": false')
        raise error  # outside the except block: the client's exception is not chained

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | StreamEvent | ChatResponse]:
        kwargs = self.kwargs(request)
        calls = ToolCallAssembler()
        splitter = ThinkSplitter()
        parts: list[str] = []
        thinking: list[str] = []
        final: Any = None
        error: HerdError | None = None
        try:
            async for part in await self.client().chat(**kwargs, stream=True):
                message = part.message
                quiet = True  # nothing to hand on from this line (so far)
                if message.thinking:
                    thinking.append(message.thinking)
                    quiet = False
                    yield ReasoningDelta(message.thinking)
                if message.content:  # <think> text inside it comes out as reasoning
                    for item in splitter.stream_items(message.content):
                        quiet = False
                        if isinstance(item, str):
                            parts.append(item)
                        yield item
                if message.tool_calls:
                    for event in feed_stream_calls(calls, message):
                        quiet = False
                        yield event
                if part.done:
                    final = part
                elif quiet:
                    yield ALIVE  # any line from the server resets the idle timeout
        except Exception as exc:
            error = await self.map_error(exc, request, kwargs["model"])
        if error is not None:
            raise error  # outside the except block: the client's exception is not chained
        tail = splitter.flush()
        if tail:
            parts.append(tail)
            yield tail
        if final is None:
            if calls:  # calls came, the answer did not end: it may have had more
                raise calls.incomplete(f"Ollama at {self.host}", request.alias)
            raise BadResponseError(
                f"Ollama at {self.host} ended the stream for '{request.alias}' without its "
                f"final 'done' line — the server stopped mid-answer; the call can be retried"
            )
        yield ChatResponse(
            content="".join(parts),
            model=final.model or kwargs["model"],
            provider=self.provider,
            alias=request.alias,
            usage=_usage(final),
            finish_reason=_finish(final.done_reason, calls.calls()),
            reasoning="".join(thinking) or splitter.reasoning,
            provider_metrics=_durations(final),
            tool_calls=calls.calls(),
        )

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        from modelherd.plugins.providers.embeddings import ollama_embed

        return await ollama_embed(self, request)

    # ---- errors ----------------------------------------------------------------

    def not_running(self) -> ConnectionFailedError:
        return ConnectionFailedError(
            f"Ollama is not running at {self.host} — start it with `ollama serve` "
            f"(or point OLLAMA_HOST / host in [models.{self.spec.alias}] at your server)"
        )

    async def map_error(self, exc: BaseException, request: ChatRequest, name: str) -> HerdError:
        import ollama

        if isinstance(exc, HerdError):
            return exc
        if isinstance(exc, ollama.ResponseError):
            return await self._status_error(exc, request, name)
        # DNS, refused (= not running), dropped, timeout: by the real cause in the chain
        transport = transport_error(
            exc,
            f"Ollama at {self.host}",
            request.alias,
            f"host in [models.{request.alias}] or OLLAMA_HOST",
            refused=self.not_running().message,
        )
        if transport is not None:
            return transport
        if isinstance(exc, ConnectionError):
            return self.not_running()
        if isinstance(exc, json.JSONDecodeError | ValidationError | AttributeError | TypeError):
            return BadResponseError(
                f"Ollama at {self.host} answered '{request.alias}' with a malformed body "
                f"({type(exc).__name__}) — check host points at an Ollama server"
            )
        return BadResponseError(
            f"Ollama at {self.host} answered something the client could "
            f"not read ({type(exc).__name__}: {exc})"[:400]
        )

    async def _status_error(self, exc: Any, request: ChatRequest, name: str) -> HerdError:
        """An HTTP error status (or an error line mid-stream, status -1) as a typed error.
        Retry-After is honoured like the cloud providers': a long one goes to the fallback."""
        status, detail = exc.status_code, str(exc.error)[:300]
        retry_after = parse_retry_after(getattr(exc, "headers", None))
        if status == 404 or (status in (-1, 400, 500) and "not found" in detail):
            return await self.missing_model(name, detail)
        if status in (401, 403):
            return AuthenticationError(
                f"Ollama at {self.host} refused the call (HTTP {status}: {detail}) — a server "
                f"behind authentication needs OLLAMA_API_KEY set (or check the proxy in front)"
            )
        if status in (429, 503):
            when = f"retry after {retry_after:g}s" if retry_after is not None else "retry later"
            return RateLimitError(
                f"Ollama at {self.host} is busy (HTTP {status}: {detail}) — {when}, "
                f"or raise OLLAMA_NUM_PARALLEL / OLLAMA_MAX_QUEUE",
                retry_after=retry_after,
            )
        if status in (400, 422):
            return BadRequestError(
                f"Ollama at {self.host} rejected the request for "
                f"'{request.alias}' ({detail}) — fix the options"
            )
        where = "mid-answer" if status == -1 else f"(HTTP {status})"
        return ProviderError(
            f"Ollama at {self.host} failed {where}: {detail} — "
            f"see `ollama serve` logs; the call can be retried",
            retry_after=retry_after,
        )

    async def missing_model(self, name: str, detail: str = "") -> ModelNotFoundError:
        from modelherd.plugins.providers.ollama.admin import list_models

        hint = ""
        try:
            pulled = [m["name"] for m in await list_models(self.client())]
        except Exception:
            pulled = []
        if name in pulled:  # a 404 for a model the server lists: "not pulled" would be wrong
            why = f" ({detail})" if detail else ""
            return ModelNotFoundError(
                f"Ollama at {self.host} lists '{name}' as pulled but answered 404 for it{why} "
                f"— the server (or a proxy in front of it) cannot serve it on this endpoint; "
                f"see the `ollama serve` log, or pull it again with `herd pull {name}`"
            )
        close = close_tags(name, pulled)
        if close:
            hint = f" (pulled here: {', '.join(close)})"
        return ModelNotFoundError(
            f"Ollama at {self.host} has no model '{name}'{hint} — run `herd pull {name}`"
        )

    # ---- health (the troubleshooting flow) and admin -----------------------------

    async def health(self) -> Health:
        from modelherd.plugins.providers.ollama.admin import diagnose

        return await diagnose(self)

    async def aclose(self) -> None:
        """Close the client unless another alias still uses it. The model stays loaded
        in Ollama (its keep_alive decides); `unload()` frees it explicitly."""
        await pool_of(self.herd, _POOL).release(self)

    async def unload(self) -> bool:
        """Free the model's memory now (keep_alive 0). True if the server confirmed."""
        from modelherd.plugins.providers.ollama.admin import unload

        return await unload(self.client(), self.name)


def _import_client() -> None:
    try:
        import ollama  # noqa: F401
        from modelherd.plugins.providers.ollama import status  # noqa: F401
    except ImportError:
        raise MissingDependencyError("ollama", "ollama", "the ollama provider") from None


def close_tags(name: str, pulled: list[str]) -> list[str]:
    """Pulled models whose name (tag aside) is close to `name`: other tags of the same
    model first. Comparing without the tag keeps every `:latest` from looking alike."""
    import difflib

    base = name.split(":")[0]
    bases = {n.split(":")[0] for n in pulled}
    near = difflib.get_close_matches(base, bases, n=3, cutoff=0.8)
    return [n for n in pulled if n.split(":")[0] in near][:3]


def _finish(done_reason: str | None, calls: list[Any]) -> FinishReason:
    # Ollama says "stop" for an answer made of tool calls too
    if calls and done_reason in ("stop", None, ""):
        return "tool_calls"
    return _FINISH.get(done_reason or "", "unknown")


def _usage(reply: Any) -> Usage:
    return Usage(input_tokens=reply.prompt_eval_count or 0, output_tokens=reply.eval_count or 0)


def _durations(reply: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for field, metric in DURATIONS.items():
        value = getattr(reply, field, None)
        if value:
            metrics[metric] = value / 1e9
    return metrics


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    register(OllamaModel)


@hookimpl
def register_commands(cli: Any) -> None:
    from modelherd.plugins.providers.ollama.cli import add_commands

    add_commands(cli)


@hookimpl
def shutdown(herd: Any) -> Any:
    pool = herd.stash.get(_POOL, None)
    return pool.aclose_current_loop() if pool else None
