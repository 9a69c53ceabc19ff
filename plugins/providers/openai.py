"""`openai` and the OpenAI-compatible family, through the official `openai` SDK.

One adapter speaks the Chat Completions wire format; each vendor is a preset of a
few class attributes (base URL, key variable, old key names, which max-tokens field
it wants). `openai_compatible` is any self-hosted server (vLLM, LM Studio, the
llama.cpp server) named by `base_url`.

The SDK's own retries are off (`max_retries=0`): the kernel's one retry policy
decides. Clients are pooled per endpoint + key + event loop (client_pool.py) and
run on aiohttp by default — measured faster than the SDK's httpx transport
(bench/providers.py, docs/performance.md).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from modelherd import hookimpl
from modelherd.errors import BadResponseError, ConfigError, HerdError
from modelherd.plugins.providers.client_pool import ClientPool, pool_of
from modelherd.plugins.providers.errors import unfinished
from modelherd.plugins.providers.keys import key_fingerprint
from modelherd.plugins.providers.openai_messages import (
    TOOL_OPTIONS,
    calls_from_json,
    feed_stream_calls,
    wire_messages,
    wire_tools,
)
from modelherd.plugins.providers.stainless import StainlessModel
from modelherd.plugins.providers.think import ThinkSplitter, split_think
from modelherd.provider import CommonOptionRanges, ProviderSettings
from modelherd.stash import StashKey
from modelherd.tool_stream import ToolCallAssembler
from modelherd.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    KeepAlive,
    ModelSpec,
    ReasoningDelta,
    StreamEvent,
    Usage,
)
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from modelherd.embed import EmbedRequest
    from modelherd.types import EmbedResponse

#: this provider's client pool in each Herd's stash
_POOL = StashKey[ClientPool]()

#: per-call options passed through to Chat Completions (max_tokens is renamed per vendor)
OPTIONS = frozenset(
    {
        "temperature",
        "max_tokens",
        "seed",
        "stop",
        "top_p",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "frequency_penalty",
        "presence_penalty",
        "reasoning_effort",
        "user",
        "logit_bias",
        "n",
        "extra_body",
    }
)

#: yielded for a chunk with nothing to show (a role-only or usage chunk): the server is
#: alive, so the pipeline's idle timeout restarts; one instance serves every chunk
ALIVE = KeepAlive()

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAISettings(ProviderSettings):
    """`[models.<alias>]` fields for the OpenAI family."""

    #: the endpoint; presets have one, `openai_compatible` needs it
    base_url: str | None = None
    #: read the key from this variable instead of the preset's (two accounts, a proxy)
    api_key_env: str | None = None
    organization: str | None = None
    #: HTTP transport under the SDK; None = aiohttp when installed (faster), else httpx
    transport: Literal["aiohttp", "httpx"] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    #: ask for usage in the last stream chunk (some self-hosted servers reject it)
    stream_usage: bool | None = None


class OpenAIOptionRanges(CommonOptionRanges):
    n: int | None = Field(default=None, ge=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)


def openai_response_format(fmt: Any) -> Any:
    """The kernel's `response_format` (a JSON schema, a typed dict, or a pydantic model
    class) in OpenAI's form."""
    if isinstance(fmt, type) and issubclass(fmt, BaseModel):
        fmt = {"type": "json_schema", "name": fmt.__name__, "schema": fmt.model_json_schema()}
    if not isinstance(fmt, dict):
        return fmt
    kind = fmt.get("type")
    if kind in ("json_object", "text") or (kind == "json_schema" and "json_schema" in fmt):
        return fmt
    schema = fmt.get("schema", fmt) if kind == "json_schema" else fmt
    name = str(fmt.get("name") or schema.get("title") or "response")
    return {
        "type": "json_schema",
        "json_schema": {
            "name": re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64],
            "schema": schema,
            "strict": bool(fmt.get("strict", False)),
        },
    }


class OpenAIModel(StainlessModel):
    provider = "openai"
    description = "OpenAI (Chat Completions, official SDK)"
    can_stream = True
    supports_schema = True
    supports_tools = True
    can_embed = True
    embed_batch_size = 256
    key_env_vars: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    legacy_key_env_vars: ClassVar[tuple[str, ...]] = ("OPENAI_KEY",)
    Settings = OpenAISettings

    sdk = "openai"
    client_class = "AsyncOpenAI"
    #: name used in messages
    vendor: ClassVar[str] = "OpenAI"
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"
    #: OpenAI's current models take max_completion_tokens; compatible servers max_tokens
    max_tokens_param: ClassVar[str] = "max_completion_tokens"
    chat_path = "/chat/completions"
    option_ranges = OpenAIOptionRanges
    transport_error_verb = "failed"
    models_list_optional = True
    health_detail = "{base_url} answers ({count} models listed)"

    def __init__(self, spec: ModelSpec, herd: Any) -> None:
        super().__init__(spec, herd)
        settings = self.settings
        assert isinstance(settings, OpenAISettings)
        self._stream_usage = settings.stream_usage if settings.stream_usage is not None else True

    # ---- client ----------------------------------------------------------------

    def client(self) -> Any:
        settings = self.settings
        assert isinstance(settings, OpenAISettings)
        key = (
            self.provider,
            self.base_url,
            key_fingerprint(self._key),
            self.transport,
            settings.organization,
            tuple(sorted(settings.headers.items())),
        )
        return pool_of(self.herd, _POOL).get(key, self._new_client, self)

    def _client_kwargs(self) -> dict[str, Any]:
        settings = self.settings
        assert isinstance(settings, OpenAISettings)
        return {"organization": settings.organization}

    @staticmethod
    def _load_types() -> tuple[Any, Any]:
        from openai import AsyncStream, BaseModel

        class RawCompletion(BaseModel):
            """A chat completion kept as the JSON the server sent (`model_extra`).

            Still the SDK's own model class, so the SDK attaches the request id; with no
            declared fields its `construct` builds nothing field by field — the typed
            ChatCompletion tree cost ~300 µs of CPU a call here (bench/gateway.py,
            docs/performance.md) for objects the adapter read once and dropped."""

        # stream chunks as the JSON objects the server sent (the SDK's `object` cast):
        # a typed ChatCompletionChunk costs ~110 µs of CPU a chunk to build here, for
        # an object read once (docs/performance.md, gateway section)
        return (RawCompletion, AsyncStream[object])

    # ---- request ---------------------------------------------------------------

    def params(self, request: ChatRequest) -> dict[str, Any]:
        model = request.model or self.spec.model
        if not model:
            raise ConfigError(f'[models.{request.alias}] has no model — set model = "..."')
        params: dict[str, Any] = {
            "model": model,
            "messages": wire_messages(request.messages),
        }
        options = request.options
        if "tools" in options or "tool_choice" in options:
            params.update(wire_tools(options))
        if options:
            self.parse_options(self.option_ranges, request)  # values in range, or one error
        for name, value in options.items():
            if value is None:
                continue
            if name not in OPTIONS:
                raise self.option_error(name, sorted(OPTIONS))
            if name in TOOL_OPTIONS:
                continue
            if name == "max_tokens":
                params[self.max_tokens_param] = value
            elif name == "response_format":
                params[name] = openai_response_format(value)
            else:
                params[name] = value
        if request.timeout is not None:
            params["timeout"] = request.timeout + 1.0  # the kernel's deadline fires first
        return params

    # ---- calls -----------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        params = self.params(request)
        completion = await self._send(request, params, stream=False)
        if isinstance(completion, str):  # the SDK's answer to a non-JSON content type
            raise self._bad_body(request, f"a non-JSON body ({completion[:60]!r})")
        try:
            data = completion.model_extra  # the JSON object (see RawCompletion)
            choice = data["choices"][0]
            message = choice["message"]
            content, reasoning = split_think(message.get("content") or "")
            reasoning = message.get("reasoning_content") or reasoning
            finish = choice.get("finish_reason")
            response = ChatResponse(
                content=content,
                model=data.get("model") or params["model"],
                provider=self.provider,
                alias=request.alias,
                usage=_usage(data.get("usage")),
                finish_reason=_FINISH.get(finish or "", "unknown"),
                reasoning=reasoning,
                request_id=getattr(completion, "_request_id", None),
                tool_calls=calls_from_json(message),
            )
        except (AttributeError, IndexError, TypeError, KeyError, ValueError) as exc:
            what = f"a body without the expected fields ({type(exc).__name__}: {exc})"
            raise self._bad_body(request, what[:200]) from None
        if finish is None:  # a 200 whose answer is not finished: never complete, never cached
            raise unfinished(self.vendor, self.base_url, request.alias, "finish_reason null")
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | StreamEvent | ChatResponse]:
        params = self.params(request)
        params["stream"] = True
        if self._stream_usage:
            params["stream_options"] = {"include_usage": True}
        stream = await self._send(request, params, stream=True)
        if isinstance(stream, str):
            raise self._bad_body(request, "a non-stream body to a stream request")
        splitter = ThinkSplitter()
        calls = ToolCallAssembler()
        parts: list[str] = []
        reasoning_parts: list[str] = []
        finish: str | None = None
        usage: Any = None
        model = params["model"]
        # the same id as a non-stream call: the x-request-id header (not the chunk id)
        request_id = _header(stream, "x-request-id")
        error: HerdError | None = None
        try:
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    raise self._bad_body(request, "a stream event that is not a JSON object")
                request_id = request_id or chunk.get("id")
                if chunk.get("usage") is not None:
                    usage = chunk["usage"]
                model = chunk.get("model") or model
                quiet = True  # nothing to hand on from this chunk (so far)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta")
                    if delta:
                        extra = delta.get("reasoning_content")
                        if extra:
                            reasoning_parts.append(extra)
                            quiet = False
                            yield ReasoningDelta(extra)
                        text = delta.get("content")
                        if text:  # <think> text inside it comes out as reasoning
                            for item in splitter.stream_items(text):
                                quiet = False
                                if isinstance(item, str):
                                    parts.append(item)
                                yield item
                        tool_calls = delta.get("tool_calls")
                        if tool_calls:
                            for event in feed_stream_calls(calls, tool_calls):
                                quiet = False
                                yield event
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                if quiet:
                    yield ALIVE  # any event from the server resets the idle timeout
        except Exception as exc:
            if calls and finish is None:  # cut in the middle of a call: never half a call
                error = calls.incomplete(self.vendor, request.alias)
            else:
                error = await self.map_error(exc, request)
        finally:
            await stream.close()
        if error is not None:
            raise error  # outside the except block: the SDK's exception is not chained
        tail = splitter.flush()
        if tail:
            parts.append(tail)
            yield tail
        if finish is None:
            if calls:
                raise calls.incomplete(self.vendor, request.alias)
            raise BadResponseError(
                f"{self.vendor} stream for '{request.alias}' ended without a finish reason — "
                f"the connection dropped mid-answer; the call can be retried"
            )
        for end in calls.end_all():
            yield end
        yield ChatResponse(
            content="".join(parts),
            model=model,
            provider=self.provider,
            alias=request.alias,
            usage=_usage(usage),
            finish_reason=_FINISH.get(finish, "unknown"),
            reasoning="".join(reasoning_parts) or splitter.reasoning,
            request_id=request_id,
            tool_calls=calls.calls(),
        )

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        from modelherd.plugins.providers.embeddings import openai_embed

        return await openai_embed(self, request)

    # ---- errors ----------------------------------------------------------------

    def _bad_body(self, request: ChatRequest, what: str) -> BadResponseError:
        return BadResponseError(
            f"{self.vendor} at {self.base_url} answered '{request.alias}' with {what} — "
            f"check base_url points at an OpenAI-compatible /v1 endpoint"
        )

    async def _list_model_ids(self) -> list[str]:
        return _model_ids(await self.client().models.list())

    async def _status_error(self, exc: Any, request: ChatRequest) -> HerdError:
        return await self._http_error(request, exc.status_code, _detail(exc), exc.response.headers)

    async def aclose(self) -> None:
        """Close this model's SDK client unless another alias still uses it."""
        await pool_of(self.herd, _POOL).release(self)


def _header(stream: Any, name: str) -> str | None:
    response = getattr(stream, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get(name) if headers is not None else None
    return str(value) if value else None


def _model_ids(page: Any) -> list[str]:
    # Gemini's compatible endpoint lists "models/gemini-2.5-flash" but takes the bare id
    return [str(m.id).removeprefix("models/") for m in page.data]


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", "") or exc)


def _field(obj: Any, name: str) -> Any:
    """`obj.name` for the SDK's stream objects, `obj[name]` for a completion's JSON."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    details = _field(raw, "prompt_tokens_details")
    cached = _field(details, "cached_tokens") if details is not None else None
    cached = cached or _field(raw, "prompt_cache_hit_tokens") or 0  # DeepSeek's name
    return Usage(
        input_tokens=_field(raw, "prompt_tokens") or 0,
        output_tokens=_field(raw, "completion_tokens") or 0,
        cache_read_tokens=int(cached),
    )


# ---- the compatible family: presets -------------------------------------------


class DeepSeekModel(OpenAIModel):
    provider = "deepseek"
    description = "DeepSeek (OpenAI-compatible API)"
    vendor = "DeepSeek"
    key_env_vars = ("DEEPSEEK_API_KEY",)
    legacy_key_env_vars = ("DEEPSEEK_KEY",)
    default_base_url = "https://api.deepseek.com"
    max_tokens_param = "max_tokens"


class GroqModel(OpenAIModel):
    provider = "groq"
    description = "Groq (OpenAI-compatible API)"
    vendor = "Groq"
    key_env_vars = ("GROQ_API_KEY",)
    legacy_key_env_vars = ()
    default_base_url = "https://api.groq.com/openai/v1"
    max_tokens_param = "max_tokens"


class XAIModel(OpenAIModel):
    provider = "xai"
    description = "xAI Grok (OpenAI-compatible API)"
    vendor = "xAI"
    key_env_vars = ("XAI_API_KEY",)
    legacy_key_env_vars = ("GROK_API_KEY",)
    default_base_url = "https://api.x.ai/v1"
    max_tokens_param = "max_tokens"


class OpenRouterModel(OpenAIModel):
    provider = "openrouter"
    description = "OpenRouter (OpenAI-compatible API)"
    vendor = "OpenRouter"
    key_env_vars = ("OPENROUTER_API_KEY",)
    legacy_key_env_vars = ()
    default_base_url = "https://openrouter.ai/api/v1"
    max_tokens_param = "max_tokens"


class GeminiModel(OpenAIModel):
    provider = "gemini"
    description = "Google Gemini (OpenAI-compatible endpoint)"
    vendor = "Gemini"
    key_env_vars = ("GEMINI_API_KEY",)
    legacy_key_env_vars = ("GEMINI_KEY",)
    default_base_url = "https://generativelanguage.googleapis.com/v1beta/openai"
    max_tokens_param = "max_tokens"


class OpenAICompatibleModel(OpenAIModel):
    """Any self-hosted server speaking Chat Completions: vLLM, LM Studio, llama.cpp server."""

    provider = "openai_compatible"
    description = "any OpenAI-compatible server, by base_url (vLLM, LM Studio, llama.cpp)"
    vendor = "OpenAI-compatible server"
    key_env_vars = ()
    legacy_key_env_vars = ()
    default_base_url = None
    max_tokens_param = "max_tokens"
    key_required = False


PROVIDERS: tuple[type[OpenAIModel], ...] = (
    OpenAIModel,
    DeepSeekModel,
    GroqModel,
    XAIModel,
    OpenRouterModel,
    GeminiModel,
    OpenAICompatibleModel,
)


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    for cls in PROVIDERS:
        register(cls)


@hookimpl
def shutdown(herd: Any) -> Any:
    pool = herd.stash.get(_POOL, None)
    return pool.aclose_current_loop() if pool else None
