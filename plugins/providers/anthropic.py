"""`anthropic`: Claude through the official async `anthropic` SDK (Messages API).

System messages become the `system` parameter; `max_tokens` (required by the API)
defaults per alias; usage includes prompt-cache reads and writes; stop reasons map
to the common finish reasons; a JSON schema becomes `output_config.format`.
Streaming reads the raw event stream (cheaper than the SDK's accumulating helper)
and checks it ended with a stop reason: the SDK does not wrap a dropped stream.
SDK retries are off (`max_retries=0`); the kernel's policy decides.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from modelherd import hookimpl
from modelherd.errors import (
    BadRequestError,
    BadResponseError,
    ConfigError,
    HerdError,
    ProviderError,
    RateLimitError,
)
from modelherd.plugins.providers.anthropic_messages import (
    TOOL_OPTIONS,
    StreamCalls,
    call_from_block,
    wire_messages,
    wire_tools,
)
from modelherd.plugins.providers.client_pool import ClientPool, pool_of
from modelherd.plugins.providers.errors import parse_retry_after, unfinished
from modelherd.plugins.providers.keys import key_fingerprint
from modelherd.plugins.providers.stainless import StainlessModel
from modelherd.provider import CommonOptionRanges, ProviderSettings
from modelherd.stash import StashKey
from modelherd.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    KeepAlive,
    ReasoningDelta,
    StreamEvent,
    Usage,
)
from pydantic import Field

#: this provider's client pool in each Herd's stash
_POOL = StashKey[ClientPool]()
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
        "parallel_tool_calls",
        "thinking",
        "metadata",
        "extra_body",
    }
)

#: yielded for an event with nothing to show (a ping, a block start, a signature): the
#: server is alive, so the pipeline's idle timeout restarts
ALIVE = KeepAlive()

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
_log = logging.getLogger("modelherd.providers.anthropic")


class AnthropicOptionRanges(CommonOptionRanges):
    temperature: float | None = Field(default=None, ge=0, le=1)  # Anthropic's range


class AnthropicModel(StainlessModel):
    provider = "anthropic"
    description = "Anthropic Claude (Messages API, official SDK)"
    can_stream = True
    supports_schema = True
    supports_tools = True
    key_env_vars = ("ANTHROPIC_API_KEY",)
    legacy_key_env_vars = ("ANTHROPIC_KEY",)
    Settings = AnthropicSettings

    sdk = "anthropic"
    client_class = "AsyncAnthropic"
    vendor = "Anthropic"
    default_base_url = DEFAULT_BASE_URL
    chat_path = "/v1/messages"
    option_ranges = AnthropicOptionRanges
    transport_error_verb = "dropped"  # the SDK does not wrap a dropped stream
    health_detail = "{base_url} answers; model {model} listed"

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
        return pool_of(self.herd, _POOL).get(key, self._new_client, self)

    @staticmethod
    def _load_types() -> tuple[Any, Any]:
        from anthropic.types import Message, RawMessageStreamEvent
        from modelherd.plugins.providers.anthropic_pings import stream_class

        # the SDK's own AsyncStream drops pings; this one hands them on (as KeepAlive)
        return (Message, stream_class(RawMessageStreamEvent))

    # ---- request ---------------------------------------------------------------

    def params(self, request: ChatRequest) -> dict[str, Any]:
        model = request.model or self.spec.model
        if not model:
            raise ConfigError(f'[models.{request.alias}] has no model — set model = "..."')
        settings = self.settings
        assert isinstance(settings, AnthropicSettings)
        system, messages = wire_messages(request.messages, request.alias)
        params: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": settings.max_tokens,
        }
        if system:
            params["system"] = system
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
            if name == "seed":
                continue  # the Messages API has no seed; it still keys the response cache
            if name in _SAMPLING:
                if settings.sampling_params:
                    params.setdefault("extra_body", {})[name] = value
                else:
                    self._warn_unsent(name)
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

    def __init__(self, spec: Any, herd: Any) -> None:
        super().__init__(spec, herd)
        #: sampling options already said to be unsent (the warning comes once per alias)
        self._unsent_warned: set[str] = set()

    def _warn_unsent(self, name: str) -> None:
        """Say once per alias that a sampling option is not sent (never silently)."""
        if name not in self._unsent_warned:
            self._unsent_warned.add(name)
            _log.warning(
                "'%s' (anthropic): option %s is not sent — the Messages API of the pinned "
                "SDK takes no sampling parameters; set sampling_params = true in "
                "[models.%s] to send it (a proxy or an older model)",
                self.spec.alias,
                name,
                self.spec.alias,
            )

    # ---- calls -----------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        params = self.params(request)
        message = await self._send(request, params, stream=False)
        if isinstance(message, str):
            raise self._bad_body(request, f"a non-JSON body ({message[:60]!r})")
        try:
            text: list[str] = []
            thinking: list[str] = []
            calls = []
            for block in message.content:
                kind = block.type
                if kind == "text":
                    text.append(block.text)
                elif kind == "thinking":
                    thinking.append(block.thinking)
                elif kind == "tool_use":
                    calls.append(call_from_block(block))
            stop = message.stop_reason
            response = ChatResponse(
                content="".join(text),
                model=message.model or params["model"],
                provider=self.provider,
                alias=request.alias,
                usage=_usage(message.usage),
                finish_reason=_FINISH.get(stop or "", "unknown"),
                reasoning="".join(thinking) or None,
                request_id=getattr(message, "_request_id", None),
                tool_calls=calls,
            )
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            what = f"a body without the expected fields ({type(exc).__name__}: {exc})"
            raise self._bad_body(request, what[:200]) from None
        if stop is None:  # a 200 whose answer is not finished: never complete, never cached
            raise unfinished(self.vendor, self.base_url, request.alias, "stop_reason null")
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | StreamEvent | ChatResponse]:
        params = self.params(request)
        params["stream"] = True
        stream = await self._send(request, params, stream=True)
        calls = StreamCalls()
        parts: list[str] = []
        thinking: list[str] = []
        usage: dict[str, int] = {}
        stop: str | None = None
        model = params["model"]
        # the same id as a non-stream call: the request-id header (not the message id)
        request_id = _header(stream, "request-id")
        error: HerdError | None = None
        try:
            async for event in stream:
                kind = event.type
                quiet = True  # nothing to hand on from this event (a ping, a block start …)
                if kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        parts.append(delta.text)
                        quiet = False
                        yield delta.text
                    elif delta.type == "thinking_delta":
                        thinking.append(delta.thinking)
                        quiet = False
                        yield ReasoningDelta(delta.thinking)
                    elif delta.type == "input_json_delta":
                        for item in calls.delta(event.index, delta.partial_json):
                            quiet = False
                            yield item
                elif kind == "content_block_start":
                    for item in calls.start(event.index, event.content_block):
                        quiet = False
                        yield item
                elif kind == "content_block_stop":
                    end = calls.stop(event.index)
                    if end is not None:
                        quiet = False
                        yield end
                elif kind == "message_start":
                    message = event.message
                    model = message.model or model
                    request_id = request_id or message.id
                    usage.update(_usage_fields(message.usage))
                elif kind == "message_delta":
                    stop = event.delta.stop_reason or stop
                    usage.update({k: v for k, v in _usage_fields(event.usage).items() if v})
                if quiet:
                    yield ALIVE  # any event from the server resets the idle timeout
        except Exception as exc:
            if calls.assembler.open_calls():  # cut in the middle of a call: never half a call
                error = calls.assembler.incomplete("Anthropic", request.alias)
            else:
                error = await self.map_error(exc, request)
        finally:
            await stream.close()
        if error is not None:
            raise error  # outside the except block: the SDK's exception is not chained
        if stop is None:
            if calls.assembler.open_calls():
                raise calls.assembler.incomplete("Anthropic", request.alias)
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
            tool_calls=calls.assembler.calls(),
        )

    # ---- errors ----------------------------------------------------------------

    def _bad_body(self, request: ChatRequest, what: str) -> BadResponseError:
        return BadResponseError(
            f"Anthropic at {self.base_url} answered '{request.alias}' with {what} — "
            f"check base_url points at the Anthropic API"
        )

    async def _list_model_ids(self) -> list[str]:
        page = await self.client().models.list(limit=100)
        return [m.id for m in page.data]

    async def _status_error(self, exc: Any, request: ChatRequest) -> HerdError:
        status = exc.status_code
        error_type = _error_type(exc)
        if status == 200 and error_type:  # an `event: error` inside a stream
            status = _ERROR_TYPES.get(error_type, 500)
        error = await self._http_error(
            request,
            status,
            _detail(exc),
            exc.response.headers if status == exc.status_code else None,
        )
        if isinstance(error, RateLimitError | ProviderError) and error.retry_after is None:
            error.retry_after = parse_retry_after(exc.response.headers)
        return error

    async def aclose(self) -> None:
        """Close this model's SDK client unless another alias still uses it."""
        await pool_of(self.herd, _POOL).release(self)


def _header(stream: Any, name: str) -> str | None:
    response = getattr(stream, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get(name) if headers is not None else None
    return str(value) if value else None


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
    pool = herd.stash.get(_POOL, None)
    return pool.aclose_current_loop() if pool else None
