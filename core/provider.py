"""The one base class every model provider implements.

A provider implements one async method, `chat`. Streaming providers also implement
`stream` (an async generator yielding text chunks and, last, the ChatResponse).
Capabilities are class attributes; per-model settings are a pydantic model with
extra="forbid" so a typo in plugins.toml is an error, not a silent default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import validate_table
from .errors import InvalidOptionError
from .lazy_model import LazyModel
from .types import (
    Availability,
    ChatRequest,
    ChatResponse,
    EmbedResponse,
    Health,
    ModelSpec,
    StreamEvent,
)

if TYPE_CHECKING:
    from .embed import EmbedRequest
    from .kernel import Herd


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class ProviderSettings(LazyModel):
    """Base for a provider's `[models.<alias>]` extra fields; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class SamplingOptions(LazyModel):
    """Per-call sampling options local engines (llama.cpp, Ollama) share; a provider's
    own options model extends it. extra="forbid": a typo is an error, not ignored.
    Values are range-checked here, before anything is sent (`max_tokens = -5` means
    "unlimited" to Ollama, and 1e9 is no temperature anyone meant)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, ge=0)
    #: a JSON schema (or OpenAI's typed form), or a pydantic model class
    response_format: dict[str, Any] | type[BaseModel] | None = None


class CommonOptionRanges(LazyModel):
    """The ranges of the common options, for providers that pass options through as a
    dict (the OpenAI family, Anthropic): only these keys are checked here, the
    provider rejects the keys it does not know. A provider narrows a range by
    subclassing (Anthropic: temperature 0..1)."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    response_format: dict[str, Any] | type[BaseModel] | None = None


class Model:
    """A model a provider can call. Subclass it and implement `chat`."""

    #: the name used in plugins.toml: `provider = "<this>"`
    provider: ClassVar[str] = ""
    #: one line shown by `herd models` / `herd plugins`
    description: ClassVar[str] = ""
    can_stream: ClassVar[bool] = False
    supports_schema: ClassVar[bool] = False
    #: takes `tools=` and answers with tool calls (a fallback chain skips models without)
    supports_tools: ClassVar[bool] = False
    #: implements `embed` (`herd.embed`); texts per upstream call
    can_embed: ClassVar[bool] = False
    embed_batch_size: ClassVar[int] = 64
    #: env vars that hold the key, first is the standard one; empty = no key needed
    key_env_vars: ClassVar[tuple[str, ...]] = ()
    #: older names still accepted, mapped to the standard one with a rename hint
    legacy_key_env_vars: ClassVar[tuple[str, ...]] = ()
    #: pydantic model validating `ModelSpec.settings`
    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    #: True for models that live in this process or on this host (residency applies)
    is_local: ClassVar[bool] = False
    #: set (on the instance) by the pipeline once `prepare()` has run; a class default so
    #: that a subclass which skips `Model.__init__` still works
    prepared: bool = False

    def __init__(self, spec: ModelSpec, herd: Herd) -> None:
        self.spec = spec
        self.herd = herd
        self.settings = self.parse_settings(spec)

    @classmethod
    def parse_settings(cls, spec: ModelSpec) -> ProviderSettings:
        return validate_table(
            cls.Settings, spec.settings, f"[models.{spec.alias}]", "docs/providers.md"
        )

    @classmethod
    def option_error(
        cls, key: str, allowed: Iterable[str], why: str | None = None
    ) -> InvalidOptionError:
        """The error for a per-call option `key` this provider does not take."""
        detail = f" ({why})" if why else ""
        return InvalidOptionError(
            f"option '{key}' is not valid for the {cls.provider} provider{detail} — "
            f"allowed: {', '.join(allowed)}"
        )

    @classmethod
    def parse_options(cls, options_model: type[OptionsT], request: ChatRequest) -> OptionsT:
        """`request.options` validated by `options_model` (a pydantic model with
        extra="forbid"); the first problem becomes one InvalidOptionError line: an unknown
        key lists the allowed ones, a bad value says what the provider accepts."""
        try:
            return options_model.model_validate(request.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"][:1])
            if first["type"] == "extra_forbidden":
                raise cls.option_error(key, options_model.model_fields, first["msg"]) from None
            value = request.options.get(key)
            raise InvalidOptionError(
                f"option {key}={value!r} is not valid for the {cls.provider} provider "
                f"({first['msg'].lower()}) — pass a value it accepts"
            ) from None

    @classmethod
    def availability(cls, spec: ModelSpec, env: Mapping[str, str]) -> Availability:
        """Can this model be called, judged without network? Default: its key is set."""
        if not cls.key_env_vars:
            return Availability(ok=True)
        for name in (*cls.key_env_vars, *cls.legacy_key_env_vars):
            if env.get(name):
                return Availability(ok=True)
        var = cls.key_env_vars[0]
        return Availability(
            ok=False, reason=f"{var} is not set", fix=f"set {var} in the environment or .env"
        )

    async def prepare(self) -> None:
        """Once, before the first attempt and outside its timeout: import the SDK, build
        clients. A heavy import here must run off the event loop (`anyio.to_thread`),
        so that a `timeout=1` first call is not spent importing. Default: nothing."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError(f"{type(self).__name__} must implement chat()")

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | StreamEvent | ChatResponse]:
        """Yield text chunks (`str`) and typed events (`ReasoningDelta`, `KeepAlive`,
        `ToolCallStart/Delta/End`), then the final ChatResponse, which holds the whole
        answer and every tool call. Default: one chunk from chat()."""
        response = await self.chat(request)
        if response.content:
            yield response.content
        yield response

    def tools_unsupported(self, request: ChatRequest) -> str | None:
        """Why this model cannot take the request's tools (None: it can). The pipeline
        asks before sending: a fallback that cannot honour tools is skipped with this
        reason. Default: the `supports_tools` attribute."""
        if self.supports_tools:
            return None
        return f"the {self.provider} provider does not take tools"

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        """Vectors for `request.texts`, in order (only when `can_embed`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed()")

    async def health(self) -> Health:
        """A live check, bounded by the caller's timeout. Default: availability only."""
        import os

        avail = self.availability(self.spec, os.environ)
        return Health(ok=avail.ok, detail=avail.reason, fix=avail.fix)

    async def aclose(self) -> None:
        """Release clients, pools or loaded weights. Called at shutdown or eviction."""
