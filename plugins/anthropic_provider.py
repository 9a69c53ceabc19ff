"""`anthropic`: Claude through the official async `anthropic` SDK (Messages API).

System messages become the `system` parameter; `max_tokens` (required by the API)
defaults per alias; usage includes prompt-cache reads and writes; stop reasons map
to the common finish reasons; a JSON schema becomes `output_config.format`.
Streaming reads the raw event stream (cheaper than the SDK's accumulating helper)
and checks it ended with a stop reason: the SDK does not wrap a dropped stream.
SDK retries are off (`max_retries=0`); the kernel's policy decides.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal

from modelherd import hookimpl
from modelherd.errors import (
    BadRequestError,
    BadResponseError,
    ConfigError,
    ConnectionFailedError,
    HerdError,
    MissingDependencyError,
    ProviderError,
    RateLimitError,
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
from .provider_errors import as_health, parse_retry_after, sdk_connection_error, status_error

_POOL = ClientPool()
DEFAULT_BASE_URL = "https://api.anthropic.com"

OPTIONS = frozenset(
    {
        "temperature",
        "max_tokens",
        "seed",
        "stop",
        "top_p",
        "top_k",
        "response_format",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "extra_body",
    }
)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "unknown",
    "model_context_window_exceeded": "length",
}

#: in-stream `event: error` types -> the HTTP status they stand for
_ERROR_TYPES = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "invalid_request_error": 400,
    "request_too_large": 413,
    "timeout_error": 504,
}


class AnthropicSettings(ProviderSettings):
    """`[models.<alias>]` fields for provider = "anthropic"."""

    base_url: str | None = None
    api_key_env: str | None = None
    #: the API requires max_tokens; used when the call does not pass one
    max_tokens: int = 4096
    transport: Literal["aiohttp", "httpx"] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    #: send temperature / top_p / top_k (in the request body). The Messages API of the
    #: SDK we pin (anthropic 2.14) no longer takes sampling parameters, so by default
    #: they are dropped; turn this on for a proxy or an older model that wants them.
    sampling_params: bool = False


_SAMPLING = frozenset({"temperature", "top_p", "top_k"})


class AnthropicModel(Model):
    provider = "anthropic"
    description = "Anthropic Claude (Messages API, official SDK)"
    can_stream = True
    supports_schema = True
    key_env_vars = ("ANTHROPIC_API_KEY",)
    legacy_key_env_vars = ("ANTHROPIC_KEY",)
    Settings = AnthropicSettings

    def __init__(self, spec: ModelSpec, herd: Any) -> None:
        super().__init__(spec, herd)
        settings = self.settings
        assert isinstance(settings, AnthropicSettings)
        from .openai_provider import default_transport

        self.base_url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.transport = settings.transport or default_transport()
        env: Mapping[str, str] = getattr(herd, "env", None) or {}
        names = (settings.api_key_env,) if settings.api_key_env else self.key_env_vars
        legacy = () if settings.api_key_env else self.legacy_key_env_vars
        self._key, found = find_key(env, names, legacy)
        self.key_var = found or names[0]

    def __repr__(self) -> str:  # never the key
        return f"<AnthropicModel alias={self.spec.alias!r} base_url={self.base_url!r}>"

    @classmethod
    def availability(cls, spec: ModelSpec, env: Mapping[str, str]) -> Availability:
        if importlib.util.find_spec("anthropic") is None:
            return Availability(
                ok=False,
                reason="the anthropic package is not installed",
                fix='pip install "modelherd[anthropic]"',
            )
        settings = cls.parse_settings(spec)
        assert isinstance(settings, AnthropicSettings)
        if settings.api_key_env and not env.get(settings.api_key_env):
            return Availability(
                ok=False,
                reason=f"{settings.api_key_env} is not set",
                fix=f"set {settings.api_key_env} in the environment or .env",
            )
        if settings.api_key_env:
            return Availability(ok=True)
        return super().availability(spec, env)

    # ---- client ----------------------------------------------------------------

    def client(self) -> Any:
        settings = self.settings
        assert isinstance(settings, AnthropicSettings)
        key = (
            self.base_url,
            key_fingerprint(self._key),
            self.transport,
            tuple(sorted(settings.headers.items())),
        )
        return _POOL.get(key, self._new_client, self)

    def _new_client(self) -> Any:
        try:
            import anthropic
        except ImportError:
            raise MissingDependencyError(
                "anthropic", "anthropic", "the anthropic provider"
            ) from None
        if not self._key:
            raise ConfigError(
                f"'{self.spec.alias}' (anthropic) needs an API key — "
                f"set {self.key_var} in the environment or .env"
            )
        settings = self.settings
        assert isinstance(settings, AnthropicSettings)
        http_client = None  # None: the SDK's default httpx transport
        if self.transport == "aiohttp":
            try:
                http_client = anthropic.DefaultAioHttpClient()
            except RuntimeError:  # the SDK's aiohttp extra is missing: stay on httpx
                self.transport = "httpx"
        return anthropic.AsyncAnthropic(
            api_key=self._key,
            base_url=self.base_url,
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
        settings = self.settings
        assert isinstance(settings, AnthropicSettings)
        system = [m.content for m in request.messages if m.role == "system"]
        messages: list[dict[str, Any]] = []
        for m in request.messages:
            if m.role == "system":
                continue
            role = "assistant" if m.role == "assistant" else "user"
            if messages and messages[-1]["role"] == role:  # the API wants turns to alternate
                messages[-1]["content"] += "\n\n" + m.content
            else:
                messages.append({"role": role, "content": m.content})
        if not messages:
            raise BadRequestError(
                f"'{request.alias}' (anthropic) got only system messages — add a user message"
            )
        params: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": settings.max_tokens,
        }
        if system:
            params["system"] = "\n\n".join(system)
        for name, value in request.options.items():
            if value is None:
                continue
            if name not in OPTIONS:
                raise self.option_error(name, sorted(OPTIONS))
            if name == "seed":
                continue  # the Messages API has no seed; it still keys the response cache
            if name in _SAMPLING:
                if settings.sampling_params:
                    params.setdefault("extra_body", {})[name] = value
                continue
            if name == "stop":
                params["stop_sequences"] = [value] if isinstance(value, str) else list(value)
            elif name == "response_format":
                schema = request.json_schema
                if schema is None:
                    raise BadRequestError(
                        "anthropic structured output needs a JSON schema — pass "
                        "response_format={...schema...} (json_object mode has no equivalent)"
                    )
                if "json_schema" in schema and isinstance(schema["json_schema"], dict):
                    schema = schema["json_schema"].get("schema", schema)  # OpenAI's form
                params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
            elif name == "extra_body":
                params["extra_body"] = {**params.get("extra_body", {}), **value}
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
            message = await _post(client, params, stream=False)
        except Exception as exc:
            raise await self.map_error(exc, request) from exc
        if isinstance(message, str):
            raise self._bad_body(request, f"a non-JSON body ({message[:60]!r})")
        try:
            text: list[str] = []
            thinking: list[str] = []
            for block in message.content:
                kind = block.type
                if kind == "text":
                    text.append(block.text)
                elif kind == "thinking":
                    thinking.append(block.thinking)
                elif kind == "tool_use":
                    text.append(json.dumps(block.input))
            return ChatResponse(
                content="".join(text),
                model=message.model or params["model"],
                provider=self.provider,
                alias=request.alias,
                usage=_usage(message.usage),
                finish_reason=_FINISH.get(message.stop_reason or "", "unknown"),
                reasoning="".join(thinking) or None,
                request_id=getattr(message, "_request_id", None),
            )
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise self._bad_body(request, f"a body without the expected fields ({exc})") from exc

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | ChatResponse]:
        params = self.params(request)
        params["stream"] = True
        client = self.client()
        try:
            stream = await _post(client, params, stream=True)
        except Exception as exc:
            raise await self.map_error(exc, request) from exc
        parts: list[str] = []
        thinking: list[str] = []
        usage: dict[str, int] = {}
        stop: str | None = None
        model = params["model"]
        request_id: str | None = None
        try:
            async for event in stream:
                kind = event.type
                if kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        parts.append(delta.text)
                        yield delta.text
                    elif delta.type == "thinking_delta":
                        thinking.append(delta.thinking)
                elif kind == "message_start":
                    message = event.message
                    model = message.model or model
                    request_id = message.id
                    usage.update(_usage_fields(message.usage))
                elif kind == "message_delta":
                    stop = event.delta.stop_reason or stop
                    usage.update({k: v for k, v in _usage_fields(event.usage).items() if v})
        except HerdError:
            raise
        except Exception as exc:
            raise await self.map_error(exc, request) from exc
        finally:
            await stream.close()
        if stop is None:
            raise BadResponseError(
                f"Anthropic stream for '{request.alias}' ended without a stop reason — "
                f"the connection dropped mid-answer; the call can be retried"
            )
        yield ChatResponse(
            content="".join(parts),
            model=model,
            provider=self.provider,
            alias=request.alias,
            usage=Usage(**usage),
            finish_reason=_FINISH.get(stop, "unknown"),
            reasoning="".join(thinking) or None,
            request_id=request_id,
        )

    # ---- errors ----------------------------------------------------------------

    def _bad_body(self, request: ChatRequest, what: str) -> BadResponseError:
        return BadResponseError(
            f"Anthropic at {self.base_url} answered '{request.alias}' with {what} — "
            f"check base_url points at the Anthropic API"
        )

    async def offered_models(self, timeout: float = 3.0) -> list[str] | None:
        import anyio

        try:
            with anyio.fail_after(timeout):
                page = await self.client().models.list(limit=100)
            return [m.id for m in page.data]
        except Exception:
            return None

    async def map_error(self, exc: BaseException, request: ChatRequest) -> HerdError:
        import anthropic

        if isinstance(exc, HerdError):
            return exc
        name = f"Anthropic at {self.base_url}"
        connection = sdk_connection_error(exc, anthropic, name, request.alias)
        if connection is not None:
            return connection
        if isinstance(exc, anthropic.APIStatusError):
            status, detail = exc.status_code, _detail(exc)
            error_type = _error_type(exc)
            if status == 200 and error_type:  # an `event: error` inside a stream
                status = _ERROR_TYPES.get(error_type, 500)
            offered = await self.offered_models() if status == 404 else None
            error = status_error(
                status,
                detail,
                provider="Anthropic",
                alias=request.alias,
                model=request.model or self.spec.model,
                key_var=self.key_var,
                headers=exc.response.headers if status == exc.status_code else None,
                offered=offered,
                secret=self._key,
            )
            if isinstance(error, RateLimitError | ProviderError) and error.retry_after is None:
                error.retry_after = parse_retry_after(exc.response.headers)
            return error
        if isinstance(exc, json.JSONDecodeError | anthropic.APIResponseValidationError):
            return self._bad_body(request, "a malformed JSON body")
        if isinstance(exc, anthropic.APIError):
            detail = redact(str(exc.message), self._key)[:300]
            return ProviderError(f"{name} failed mid-answer ({detail}) — the call can be retried")
        module = type(exc).__module__.split(".")[0]
        if module in ("httpx", "httpx2", "httpcore", "aiohttp", "h11") or isinstance(exc, OSError):
            # the SDK does not wrap a dropped stream: the transport's error escapes
            return ConnectionFailedError(
                f"connection to {name} dropped ({type(exc).__name__}) — the call can be retried"
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
            page = await self.client().models.list(limit=100)
            ids = [m.id for m in page.data]
        except Exception as exc:
            return as_health(await self.map_error(exc, request))
        latency = time.perf_counter() - started
        if self.spec.model and ids and self.spec.model not in ids:
            return as_health(
                status_error(
                    404,
                    "",
                    provider="Anthropic",
                    alias=self.spec.alias,
                    model=self.spec.model,
                    key_var=self.key_var,
                    offered=ids,
                ),
                latency,
            )
        return Health(
            ok=True,
            detail=f"{self.base_url} answers; model {self.spec.model} listed",
            latency_s=latency,
        )


_TYPES: tuple[Any, Any] | None = None


async def _post(client: Any, params: dict[str, Any], *, stream: bool) -> Any:
    """POST /v1/messages through the SDK's own client (transport, auth, errors, models),
    without `create()`'s per-call TypedDict transform: our body is plain JSON already."""
    global _TYPES
    if _TYPES is None:
        from anthropic import AsyncStream
        from anthropic.types import Message, RawMessageStreamEvent

        _TYPES = (Message, AsyncStream[RawMessageStreamEvent])
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
            "/v1/messages",
            body=body,
            cast_to=_TYPES[0],
            options=options,
            stream=True,
            stream_cls=_TYPES[1],
        )
    return await client.post("/v1/messages", body=body, cast_to=_TYPES[0], options=options)


def _usage_fields(raw: Any) -> dict[str, int]:
    if raw is None:
        return {}
    return {
        "input_tokens": getattr(raw, "input_tokens", None) or 0,
        "output_tokens": getattr(raw, "output_tokens", None) or 0,
        "cache_read_tokens": getattr(raw, "cache_read_input_tokens", None) or 0,
        "cache_creation_tokens": getattr(raw, "cache_creation_input_tokens", None) or 0,
    }


def _usage(raw: Any) -> Usage:
    return Usage(**_usage_fields(raw))


def _error_type(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            kind = inner.get("type")
            return str(kind) if kind else None
    return None


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", "") or exc)


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    register(AnthropicModel)


@hookimpl
def shutdown(herd: Any) -> Any:
    return _POOL.aclose_current_loop() if len(_POOL) else None
