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

import importlib.util
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar, Literal

from modelherd import hookimpl
from modelherd.errors import (
    BadResponseError,
    ConfigError,
    ConnectionFailedError,
    HerdError,
    MissingDependencyError,
    ProviderError,
)
from modelherd.provider import Model, ProviderSettings
from modelherd.types import (
    Availability,
    ChatRequest,
    ChatResponse,
    FinishReason,
    Health,
    ModelSpec,
    Usage,
)
from pydantic import Field

from .client_pool import ClientPool
from .keys import find_key, key_fingerprint, redact
from .provider_errors import as_health, sdk_connection_error, status_error
from .think import ThinkSplitter, split_think

_POOL = ClientPool()

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
        "frequency_penalty",
        "presence_penalty",
        "reasoning_effort",
        "user",
        "logit_bias",
        "n",
        "extra_body",
    }
)

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


def default_transport() -> str:
    return "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx"


def openai_response_format(fmt: Any) -> Any:
    """The kernel's `response_format` (a JSON schema, or a typed dict) in OpenAI's form."""
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


class OpenAIModel(Model):
    provider = "openai"
    description = "OpenAI (Chat Completions, official SDK)"
    can_stream = True
    supports_schema = True
    key_env_vars: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    legacy_key_env_vars: ClassVar[tuple[str, ...]] = ("OPENAI_KEY",)
    Settings = OpenAISettings

    #: name used in messages
    vendor: ClassVar[str] = "OpenAI"
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"
    #: OpenAI's current models take max_completion_tokens; compatible servers max_tokens
    max_tokens_param: ClassVar[str] = "max_completion_tokens"
    key_required: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, herd: Any) -> None:
        super().__init__(spec, herd)
        settings = self.settings
        assert isinstance(settings, OpenAISettings)
        self.base_url = (settings.base_url or self.default_base_url or "").rstrip("/")
        self.transport = settings.transport or default_transport()
        env: Mapping[str, str] = getattr(herd, "env", None) or {}
        names = (settings.api_key_env,) if settings.api_key_env else self.key_env_vars
        legacy = () if settings.api_key_env else self.legacy_key_env_vars
        self._key, self.key_var = find_key(env, names, legacy)
        if self.key_var is None:
            self.key_var = names[0] if names else None
        self._stream_usage = settings.stream_usage if settings.stream_usage is not None else True

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} alias={self.spec.alias!r} base_url={self.base_url!r}>"

    # ---- availability (no network) ---------------------------------------------

    @classmethod
    def availability(cls, spec: ModelSpec, env: Mapping[str, str]) -> Availability:
        if importlib.util.find_spec("openai") is None:
            return Availability(
                ok=False,
                reason="the openai package is not installed",
                fix='pip install "modelherd[openai]"',
            )
        settings = cls.parse_settings(spec)
        assert isinstance(settings, OpenAISettings)
        if not (settings.base_url or cls.default_base_url):
            return Availability(
                ok=False,
                reason="no base_url",
                fix=f'set base_url = "http://host:port/v1" in [models.{spec.alias}]',
            )
        if settings.api_key_env:
            if env.get(settings.api_key_env):
                return Availability(ok=True)
            return Availability(
                ok=False,
                reason=f"{settings.api_key_env} is not set",
                fix=f"set {settings.api_key_env} in the environment or .env",
            )
        if not cls.key_required:
            return Availability(ok=True)
        return super().availability(spec, env)

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
        return _POOL.get(key, self._new_client, self)

    def _new_client(self) -> Any:
        try:
            import openai
        except ImportError:
            raise MissingDependencyError(
                "openai", "openai", f"the {self.provider} provider"
            ) from None
        if self.key_required and not self._key:
            var = self.key_var or "the API key variable"
            raise ConfigError(
                f"'{self.spec.alias}' ({self.provider}) needs an API key — "
                f"set {var} in the environment or .env"
            )
        settings = self.settings
        assert isinstance(settings, OpenAISettings)
        http_client = None  # None: the SDK's default httpx transport
        if self.transport == "aiohttp":
            try:
                http_client = openai.DefaultAioHttpClient()
            except RuntimeError:  # the SDK's aiohttp extra is missing: stay on httpx
                self.transport = "httpx"
        return openai.AsyncOpenAI(
            api_key=self._key or "not-needed",  # self-hosted servers ignore it; the SDK wants one
            base_url=self.base_url,
            organization=settings.organization,
            default_headers=settings.headers or None,
            max_retries=0,  # the kernel's retry policy decides
            timeout=self.herd.config.herd.timeout if self.herd is not None else 600.0,
            http_client=http_client,
        )

    # ---- request ---------------------------------------------------------------

    def params(self, request: ChatRequest) -> dict[str, Any]:
        model = request.model or self.spec.model
        if not model:
            raise ConfigError(f'[models.{request.alias}] has no model — set model = "..."')
        params: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        for name, value in request.options.items():
            if value is None:
                continue
            if name not in OPTIONS:
                raise self.option_error(name, sorted(OPTIONS))
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
        client = self.client()
        try:
            completion = await _post(client, params, stream=False)
        except Exception as exc:
            raise await self.map_error(exc, request) from exc
        if isinstance(completion, str):  # the SDK's answer to a non-JSON content type
            raise self._bad_body(request, f"a non-JSON body ({completion[:60]!r})")
        try:
            choice = completion.choices[0]
            message = choice.message
            content, reasoning = split_think(message.content or "")
            reasoning = getattr(message, "reasoning_content", None) or reasoning
            return ChatResponse(
                content=content,
                model=completion.model or params["model"],
                provider=self.provider,
                alias=request.alias,
                usage=_usage(completion.usage),
                finish_reason=_FINISH.get(choice.finish_reason or "", "unknown"),
                reasoning=reasoning,
                request_id=getattr(completion, "_request_id", None),
            )
        except (AttributeError, IndexError, TypeError, KeyError, ValueError) as exc:
            raise self._bad_body(request, f"a body without the expected fields ({exc})") from exc

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | ChatResponse]:
        params = self.params(request)
        params["stream"] = True
        if self._stream_usage:
            params["stream_options"] = {"include_usage": True}
        client = self.client()
        try:
            stream = await _post(client, params, stream=True)
        except Exception as exc:
            raise await self.map_error(exc, request) from exc
        if isinstance(stream, str):
            raise self._bad_body(request, "a non-stream body to a stream request")
        splitter = ThinkSplitter()
        parts: list[str] = []
        reasoning_parts: list[str] = []
        finish: str | None = None
        usage: Any = None
        model = params["model"]
        request_id = None
        try:
            async for chunk in stream:
                request_id = request_id or getattr(chunk, "id", None)
                if chunk.usage is not None:
                    usage = chunk.usage
                model = chunk.model or model
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta is not None:
                        extra = getattr(delta, "reasoning_content", None)
                        if extra:
                            reasoning_parts.append(extra)
                        if delta.content:
                            text = splitter.feed(delta.content)
                            if text:
                                parts.append(text)
                                yield text
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except HerdError:
            raise
        except Exception as exc:
            raise await self.map_error(exc, request) from exc
        finally:
            await stream.close()
        tail = splitter.flush()
        if tail:
            parts.append(tail)
            yield tail
        if finish is None:
            raise BadResponseError(
                f"{self.vendor} stream for '{request.alias}' ended without a finish reason — "
                f"the connection dropped mid-answer; the call can be retried"
            )
        yield ChatResponse(
            content="".join(parts),
            model=model,
            provider=self.provider,
            alias=request.alias,
            usage=_usage(usage),
            finish_reason=_FINISH.get(finish, "unknown"),
            reasoning="".join(reasoning_parts) or splitter.reasoning,
            request_id=request_id,
        )

    # ---- errors ----------------------------------------------------------------

    def _bad_body(self, request: ChatRequest, what: str) -> BadResponseError:
        return BadResponseError(
            f"{self.vendor} at {self.base_url} answered '{request.alias}' with {what} — "
            f"check base_url points at an OpenAI-compatible /v1 endpoint"
        )

    async def offered_models(self, timeout: float = 3.0) -> list[str] | None:
        """The model ids the endpoint lists (for 'did you mean'); None when it won't say."""
        import anyio

        try:
            with anyio.fail_after(timeout):
                page = await self.client().models.list()
            return _model_ids(page)
        except Exception:
            return None

    async def map_error(self, exc: BaseException, request: ChatRequest) -> HerdError:
        import openai

        if isinstance(exc, HerdError):
            return exc
        name = f"{self.vendor} at {self.base_url}"
        connection = sdk_connection_error(exc, openai, name, request.alias)
        if connection is not None:
            return connection
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            offered = await self.offered_models() if status == 404 else None
            return status_error(
                status,
                _detail(exc),
                provider=self.vendor,
                alias=request.alias,
                model=request.model or self.spec.model,
                key_var=self.key_var,
                headers=exc.response.headers,
                offered=offered,
                secret=self._key,
            )
        if isinstance(exc, json.JSONDecodeError | openai.APIResponseValidationError):
            return self._bad_body(request, "a malformed JSON body")
        if isinstance(exc, openai.APIError):  # an error event inside a stream
            detail = redact(str(exc.message), self._key)[:300]
            return ProviderError(f"{name} failed mid-answer ({detail}) — the call can be retried")
        module = type(exc).__module__.split(".")[0]
        if module in ("httpx", "httpx2", "httpcore", "aiohttp", "h11") or isinstance(exc, OSError):
            return ConnectionFailedError(
                f"connection to {name} failed ({type(exc).__name__}) — the call can be retried"
            )
        return self._bad_body(request, f"something the SDK could not read ({type(exc).__name__})")

    async def aclose(self) -> None:
        """Close this model's SDK client unless another alias still uses it."""
        await _POOL.release(self)

    # ---- health / lifecycle ----------------------------------------------------

    async def health(self) -> Health:
        avail = self.availability(self.spec, getattr(self.herd, "env", {}) or {})
        if not avail.ok:
            return Health(ok=False, detail=avail.reason, fix=avail.fix)
        import time

        started = time.perf_counter()
        request = ChatRequest(
            alias=self.spec.alias, provider=self.provider, model=self.spec.model, messages=[]
        )
        try:
            page = await self.client().models.list()
            ids = _model_ids(page)
        except Exception as exc:
            import openai

            if isinstance(exc, openai.NotFoundError):  # a server without GET /models
                return Health(
                    ok=True,
                    detail=f"{self.base_url} answers (it lists no models)",
                    latency_s=time.perf_counter() - started,
                )
            return as_health(await self.map_error(exc, request))
        latency = time.perf_counter() - started
        if self.spec.model and ids and self.spec.model not in ids:
            return as_health(
                status_error(
                    404,
                    "",
                    provider=self.vendor,
                    alias=self.spec.alias,
                    model=self.spec.model,
                    key_var=self.key_var,
                    offered=ids,
                ),
                latency,
            )
        return Health(
            ok=True, detail=f"{self.base_url} answers ({len(ids)} models listed)", latency_s=latency
        )


_TYPES: tuple[Any, Any] | None = None


async def _post(client: Any, params: dict[str, Any], *, stream: bool) -> Any:
    """POST /chat/completions through the SDK's own client: its transport, auth, error
    classes and response models — without `create()`'s per-call TypedDict transform,
    which costs ~200 µs a call here and is a no-op for the plain JSON we build
    (bench/providers.py measures it; the openai README documents `client.post`)."""
    global _TYPES
    if _TYPES is None:
        from openai import AsyncStream
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        _TYPES = (ChatCompletion, AsyncStream[ChatCompletionChunk])
    body = dict(params)
    options: dict[str, Any] = {}
    timeout = body.pop("timeout", None)
    if timeout is not None:
        options["timeout"] = timeout
    extra = body.pop("extra_body", None)
    if extra:
        body.update(extra)
    if stream:
        return await client.post(
            "/chat/completions",
            body=body,
            cast_to=_TYPES[0],
            options=options,
            stream=True,
            stream_cls=_TYPES[1],
        )
    return await client.post("/chat/completions", body=body, cast_to=_TYPES[0], options=options)


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


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    cached = cached or getattr(raw, "prompt_cache_hit_tokens", None) or 0  # DeepSeek's name
    return Usage(
        input_tokens=raw.prompt_tokens or 0,
        output_tokens=raw.completion_tokens or 0,
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
    return _POOL.aclose_current_loop() if len(_POOL) else None
