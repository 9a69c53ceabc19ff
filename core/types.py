"""The values that travel through the call pipeline.

Requests and responses are pydantic models (validated once, at the edge, where the
user hands them in). Metrics are plain slotted dataclasses: the kernel emits several
per call, so they must cost next to nothing to build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "unknown"]
CacheMode = Literal["default", "no-store", "no-cache", "only"]
_M = TypeVar("_M", bound=BaseModel)

#: Options every provider understands; each provider maps them to its own wire names.
COMMON_OPTIONS = frozenset(
    {"temperature", "max_tokens", "seed", "stop", "top_p", "response_format", "tools"}
)


def trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """Build a model from values the kernel has already checked, skipping validation.

    `model_construct` costs ~4 µs per object (it walks every field for defaults and
    aliases); this costs <1 µs. Only for hot-path objects whose every field the
    caller supplies with the right type — never for user input.
    """
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


class Usage(BaseModel):
    """Tokens a call consumed, as the provider reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ModelSpec(BaseModel):
    """A named model alias from plugins.toml, resolved: who serves it and how.

    `settings` holds provider-specific fields (a GGUF path, a base URL, keep_alive …);
    each provider validates them with its own pydantic model.
    """

    model_config = ConfigDict(extra="forbid")

    alias: str
    provider: str
    model: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    fallbacks: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = None
    retries: int | None = None


class ChatRequest(BaseModel):
    """One call as it goes down the pipeline.

    Plugins may adjust `options` in `before_call` (an optimizer sets `n_gpu_layers`,
    say) and may keep per-call state in `context` (a span, a timer); `context` never
    takes part in cache keys.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    alias: str
    provider: str
    model: str
    messages: list[Message]
    options: dict[str, Any] = Field(default_factory=dict)
    tenant: str | None = None
    agent: str | None = None
    stream: bool = False
    cache: CacheMode = "default"
    cache_ttl: float | None = None
    timeout: float | None = None
    priority: int = 0
    context: dict[str, Any] = Field(default_factory=dict)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the caller asked the answer to follow, if any."""
        fmt = self.options.get("response_format")
        if isinstance(fmt, dict):
            return fmt.get("schema", fmt) if fmt.get("type") != "json_object" else None
        return None


class ChatResponse(BaseModel):
    """What every call returns, whichever provider (or cache tier) answered."""

    model_config = ConfigDict(extra="forbid")

    content: str
    model: str
    provider: str
    alias: str = ""
    usage: Usage = Field(default_factory=Usage)
    finish_reason: FinishReason = "stop"
    latency_s: float = 0.0
    cache_tier: str | None = None
    reasoning: str | None = None
    attempts: int = 1
    fallback_from: str | None = None
    request_id: str | None = None
    provider_metrics: dict[str, float] = Field(default_factory=dict)

    def json_content(self) -> Any:
        """The content parsed as JSON (structured output); raises ValueError if it is not."""
        import json

        return json.loads(self.content)


class Availability(BaseModel):
    """Whether a model can be called right now, found without any network call."""

    ok: bool
    reason: str = ""
    fix: str = ""


class Health(BaseModel):
    """The result of a live health check (network allowed, bounded by a timeout)."""

    ok: bool
    detail: str = ""
    fix: str = ""
    latency_s: float | None = None


@dataclass(slots=True)
class Metric:
    """One measurement for `on_metric`.

    kind is "counter" (add value), "histogram" (record value) or "gauge" (set value).
    Names follow the OpenTelemetry GenAI conventions where one exists
    (`gen_ai.client.operation.duration`), else `herd.*`.
    """

    name: str
    value: float
    unit: str = "1"
    kind: Literal["counter", "histogram", "gauge"] = "counter"
    attributes: dict[str, Any] = field(default_factory=dict)
