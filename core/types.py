"""The values that travel through the call pipeline.

Requests and responses are pydantic models (validated once, at the edge, where the
user hands them in). Metrics and stream events are plain slotted dataclasses: the
kernel emits several per call (or per token), so they must cost next to nothing.

A `Message` is one neutral shape every provider maps to its wire format (docs/tools.md):
`content` is a string or a list of parts (`TextPart`, `ImagePart`), an assistant
message may carry `tool_calls`, and a `tool` message carries the `tool_call_id` it
answers.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticUndefined

from .lazy_model import LazyModel
from .stash import Stash

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "unknown"]
CacheMode = Literal["default", "no-store", "no-cache", "only"]
_M = TypeVar("_M", bound=BaseModel)

#: Options every provider understands; each provider maps them to its own wire names.
COMMON_OPTIONS = frozenset(
    {
        "temperature",
        "max_tokens",
        "seed",
        "stop",
        "top_p",
        "response_format",
        "tools",
        "tool_choice",
    }
)
#: per class `trusted` has built: (field -> plain default, field -> default factory,
#: the number of fields); present only once the class is complete
_SHAPES: dict[type, tuple[dict[str, Any], dict[str, Any], int]] = {}


def _shape(cls: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any], int]:
    # A LazyModel never validated yet is incomplete, and pydantic retries its build on
    # every `__new__` (~13 µs): complete it here, once per class.
    if not cls.__pydantic_complete__:
        cls.model_rebuild()
    plain: dict[str, Any] = {}
    factories: dict[str, Any] = {}
    fields = cls.__pydantic_fields__  # not model_fields: a slow class property (~5 µs)
    for name, info in fields.items():
        if info.default_factory is not None:
            factories[name] = info.default_factory
        elif info.default is not PydanticUndefined:
            plain[name] = info.default
    found = _SHAPES[cls] = (plain, factories, len(fields))
    return found


def trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """Build a model from values the kernel has already checked, skipping validation.

    `model_construct` costs ~4 µs per object (it walks every field for defaults and
    aliases); this costs <1 µs. Only for hot-path objects whose every field the
    caller supplies with the right type — never for user input. Fields the caller
    leaves out get their declared default (a field added later cannot break callers).
    """
    plain, factories, size = _SHAPES.get(cls) or _shape(cls)
    if len(values) != size:
        values = {**plain, **values}
        for name, factory in factories.items():
            if name not in values:
                values[name] = factory()
    obj = _new(cls)
    _set_dict(obj, values)
    _set_fields_set(obj, set(values))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


# BaseModel's own slot descriptors, called directly: `object.__setattr__(obj, name, v)`
# looks each one up by name on every call, and `trusted` runs several times per call
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def assign(obj: BaseModel, name: str, value: Any) -> None:
    """Set one field the kernel has already checked, skipping pydantic's `__setattr__`.

    A plain `response.latency_s = x` costs ~1.5 µs (frozen and private checks, then the
    fields-set bookkeeping); the pipeline sets a few fields on every call. Only for
    non-frozen models and values of the field's type — never for user input.
    """
    obj.__dict__[name] = value
    obj.__pydantic_fields_set__.add(name)


_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _sniff_image(data: bytes) -> str | None:
    for magic, media_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class TextPart(LazyModel):
    """A piece of text inside a message's content list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text"] = "text"
    text: str


class ImagePart(LazyModel):
    """An image, given by exactly one of `url` (http(s) or a data: URL), `data` (bytes)
    or `path` (a local file, read when the request is sent). `media_type` is found from
    the bytes or the file name when not given; it must be an image/* type."""

    # bytes travel as base64 in JSON (cache entries, traces), never as raw text
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    type: Literal["image"] = "image"
    url: str | None = None
    data: bytes | None = None
    path: str | None = None
    media_type: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        given = [n for n in ("url", "data", "path") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "an image part needs exactly one of url=, data= or path= "
                f"(got {', '.join(given) or 'none'})"
            )
        media_type = self.media_type
        if media_type is None and self.data is not None:
            media_type = _sniff_image(self.data)
            if media_type is None:
                raise ValueError(
                    "an image given as data= needs media_type= (e.g. 'image/png'): "
                    "the bytes are not PNG, JPEG, GIF or WebP"
                )
        if media_type is None and self.path is not None:
            import mimetypes  # here, not at import: only images given by path need it

            media_type = mimetypes.guess_type(self.path)[0]
            if media_type is None:
                raise ValueError(
                    f"cannot tell the image type of {self.path!r} from its name — "
                    f"pass media_type= (e.g. 'image/png')"
                )
        if self.url is not None and self.url.startswith("data:") and media_type is None:
            media_type = self.url[5:].split(";", 1)[0].split(",", 1)[0] or None
        if media_type is not None and not media_type.startswith("image/"):
            raise ValueError(f"media_type {media_type!r} is not an image/* type")
        object.__setattr__(self, "media_type", media_type)
        return self

    def load(self) -> tuple[str, bytes]:
        """(media type, bytes) of an image given as data, a path or a data: URL.

        An http(s) URL is not fetched here (no network behind the caller's back): a
        provider that needs bytes says so in its error."""
        if self.data is not None:
            return str(self.media_type), self.data
        if self.path is not None:
            try:
                return str(self.media_type), Path(self.path).expanduser().read_bytes()
            except OSError as exc:
                raise ValueError(
                    f"cannot read the image {self.path!r}: {exc.strerror or exc}"
                ) from None
        assert self.url is not None
        if self.url.startswith("data:") and ";base64," in self.url:
            return str(self.media_type), base64.b64decode(self.url.split(",", 1)[1])
        raise ValueError(f"the image {self.url!r} is a URL, not bytes")

    @property
    def is_remote(self) -> bool:
        """True for an http(s) URL (a provider may pass it on; bytes need a download)."""
        return self.url is not None and not self.url.startswith("data:")

    def base64(self) -> str:
        return base64.b64encode(self.load()[1]).decode("ascii")

    def data_url(self) -> str:
        if self.url is not None:
            return self.url
        return f"data:{self.media_type};base64,{self.base64()}"


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ToolCall(LazyModel):
    """One function call a model asked for.

    `arguments` is the parsed JSON object (`{}` when the model wrote something that
    is not one); `raw_arguments` is the text as the model wrote it. `error` is None
    when the arguments are valid against the tool's schema, else why not — feed it
    back with `Message.tool_error(call)` so the model can correct itself.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Message(LazyModel):
    """One chat turn.

    `content` is a string or a list of parts (text and images). An assistant turn may
    carry `tool_calls` (its content may then be empty); a `tool` turn answers one call
    and names it by `tool_call_id` (`Message.tool_result(call, value)` builds one).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str | list[ContentPart] = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    #: the tool's name on a `tool` message (Ollama and some templates want it)
    name: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id= (the id of the call it answers)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role!r} ones")
        return self

    @property
    def text(self) -> str:
        """The text of the message (the text parts joined, images left out)."""
        content = self.content
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        content = self.content
        if isinstance(content, str):
            return []
        return [p for p in content if isinstance(p, ImagePart)]

    @property
    def is_plain(self) -> bool:
        """Role and string content only (the shape every provider and cache key fast path
        handles)."""
        return isinstance(self.content, str) and not self.tool_calls and self.tool_call_id is None

    @classmethod
    def tool_result(cls, call: ToolCall, result: Any) -> Message:
        """The `tool` message answering `call` with `result` (a string, or JSON-encoded)."""
        if isinstance(result, BaseModel):
            result = result.model_dump_json()
        elif not isinstance(result, str):
            import json

            result = json.dumps(result, ensure_ascii=False, default=str)
        return cls(role="tool", content=result, tool_call_id=call.id, name=call.name)

    @classmethod
    def tool_error(cls, call: ToolCall, error: str | None = None) -> Message:
        """The `tool` message telling the model its call failed (bad arguments by default)."""
        why = error or call.error or "the call failed"
        return cls(
            role="tool",
            content=f"error: {why} — call {call.name} again with corrected arguments",
            tool_call_id=call.id,
            name=call.name,
        )


class Cost(LazyModel):
    """What one call cost in money, and where the price came from (docs/cost.md).

    `amount` is None when no price is known (a cloud model genai-prices does not
    list and plugins.toml does not price): unknown is never shown as free. On a cache
    hit `amount` is 0 and `saved` is what the call would have cost upstream.

    Frozen: calls priced alike (every call to a free local model, every call to a model
    with no known price) share one Cost object, so pricing them allocates nothing.
    """

    model_config = ConfigDict(frozen=True)

    amount: float | None = 0.0
    currency: str = "USD"
    #: "genai-prices <version>", "plugins.toml", "local", or "unknown: <why>"
    source: str = ""
    saved: float = 0.0


class Price(LazyModel):
    """`[models.<alias>] price = {...}`: a per-model price that wins over genai-prices."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    #: cached-input (prompt cache read) tokens; default: the input price
    cached_input_per_mtok: float | None = Field(None, ge=0)
    #: prompt-cache write tokens (Anthropic); default: the input price
    cache_write_per_mtok: float | None = Field(None, ge=0)
    #: a local or rented machine's cost per hour, charged by the call's latency
    per_hour: float = Field(0.0, ge=0)
    currency: str = "USD"


class Usage(LazyModel):
    """Tokens a call consumed, as the provider reported them, and their cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    #: set after the call by the cost plugin (None when it is off)
    cost: Cost | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ModelSpec(LazyModel):
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
    price: Price | None = None


class ChatRequest(LazyModel):
    """One call as it goes down the pipeline.

    Plugins may adjust `options` in `before_call` (an optimizer sets `n_gpu_layers`,
    say) and may keep per-call state in `stash` under their own typed `StashKey` (a
    span, a timer); the stash never takes part in cache keys. Each fallback attempt
    gets a fresh stash.
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
    stash: Stash = Field(default_factory=Stash, exclude=True, repr=False)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the caller asked the answer to follow, if any."""
        fmt = self.options.get("response_format")
        if isinstance(fmt, type) and issubclass(fmt, BaseModel):  # a pydantic model class
            return fmt.model_json_schema()
        if isinstance(fmt, dict):
            return fmt.get("schema", fmt) if fmt.get("type") != "json_object" else None
        return None


class ChatResponse(LazyModel):
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
    #: the function calls the model asked for (finish_reason "tool_calls")
    tool_calls: list[ToolCall] = Field(default_factory=list)
    #: the answer validated into the call's `output_type` (never stored: rebuilt on a hit)
    parsed: Any = Field(default=None, exclude=True)

    def json_content(self) -> Any:
        """The content parsed as JSON (structured output); raises ValueError if it is not."""
        import json

        return json.loads(self.content)


class EmbedResponse(LazyModel):
    """What `herd.embed` returns: one vector per input text, in order."""

    model_config = ConfigDict(extra="forbid")

    vectors: list[list[float]]
    model: str
    provider: str
    alias: str = ""
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    #: how many of the texts came from the cache (0: all computed now)
    cached: int = 0

    @property
    def dimensions(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0


class Availability(LazyModel):
    """Whether a model can be called right now, found without any network call."""

    ok: bool
    reason: str = ""
    fix: str = ""


class Health(LazyModel):
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


# ---- stream events ----------------------------------------------------------------
#
# What `Model.stream` may yield besides plain `str` text chunks (still accepted: a
# `str` is a TextDelta) and, last, the ChatResponse. `herd.stream(..., events=True)`
# hands them to the caller; plain `herd.stream` yields only the text. Slotted
# dataclasses: one is built per token.


@dataclass(slots=True, frozen=True)
class TextDelta:
    """Visible answer text."""

    text: str


@dataclass(slots=True, frozen=True)
class ReasoningDelta:
    """Reasoning ("thinking") text, shown apart from the answer; counts as activity."""

    text: str


@dataclass(slots=True, frozen=True)
class KeepAlive:
    """The provider is alive but has nothing to show (a ping, an empty chunk): resets the
    idle timer, carries no text."""


@dataclass(slots=True, frozen=True)
class ToolCallStart:
    """A tool call begins: `index` is its position among this answer's calls."""

    index: int
    id: str
    name: str


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A fragment of the call's JSON arguments (concatenate them in order)."""

    index: int
    arguments: str


@dataclass(slots=True, frozen=True)
class ToolCallEnd:
    """The call at `index` is complete; `call` holds its parsed arguments."""

    index: int
    call: ToolCall


StreamEvent = TextDelta | ReasoningDelta | KeepAlive | ToolCallStart | ToolCallDelta | ToolCallEnd
