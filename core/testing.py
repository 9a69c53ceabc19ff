"""Test kit: `MockModel` and pytest fixtures, shipped as a pytest plugin (`pytest11`).

    def test_my_plugin(mock_herd, mock_model, with_plugin):
        with_plugin(my_plugin)
        mock_model.enqueue("BUY")
        assert mock_herd.chat_sync("mock", "decide").content == "BUY"

Herds built here load no installed plugin unless asked: a test never calls a real
model by accident.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from .config import HerdConfig
from .embed import EmbedRequest
from .kernel import Herd, hookimpl
from .provider import Model
from .types import (
    ChatRequest,
    ChatResponse,
    EmbedResponse,
    ModelSpec,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

Canned = (
    str | ChatResponse | ToolCall | list[ToolCall] | BaseException | Callable[[ChatRequest], Any]
)


class MockModel(Model):
    """A scripted model: answers what you `enqueue`, records every request in `history`.

    An enqueued exception is raised; a callable is called with the request and its
    result is used (str, ChatResponse or exception). A ToolCall (or a list of them) is
    an answer asking for those calls (finish_reason "tool_calls"); streamed, its
    arguments arrive in several ToolCallDelta fragments. When the queue is empty the
    `default` answer is returned. `latency` (seconds) is slept before each answer.
    """

    provider = "mock"
    description = "scripted answers for tests"
    can_stream = True
    supports_schema = True
    supports_tools = True
    can_embed = True

    def __init__(
        self,
        spec: ModelSpec | None = None,
        herd: Herd | None = None,
        *,
        latency: float = 0.0,
        default: str = "ok",
    ) -> None:
        self.spec = spec or ModelSpec(alias="mock", provider="mock", model="mock-1")
        self.herd = herd  # type: ignore[assignment]
        self.settings = self.Settings()
        self.latency = latency
        self.default = default
        self.queue: collections.deque[Canned] = collections.deque()
        self.history: list[ChatRequest] = []
        self.embed_history: list[EmbedRequest] = []
        self.closed = False

    def enqueue(self, *items: Canned) -> MockModel:
        self.queue.extend(items)
        return self

    def _next(self, request: ChatRequest) -> ChatResponse:
        item: Any = self.queue.popleft() if self.queue else self.default
        if callable(item) and not isinstance(item, BaseException):
            item = item(request)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, ChatResponse):
            return item.model_copy()
        if isinstance(item, ToolCall):
            item = [item]
        if isinstance(item, list) and all(isinstance(c, ToolCall) for c in item):
            return ChatResponse(
                content="",
                model=request.model or self.spec.model,
                provider=self.provider,
                alias=request.alias,
                finish_reason="tool_calls",
                tool_calls=[c.model_copy() for c in item],
                usage=Usage(input_tokens=_words(request), output_tokens=len(item)),
            )
        text = str(item)
        return ChatResponse(
            content=text,
            model=request.model or self.spec.model,
            provider=self.provider,
            alias=request.alias,
            usage=Usage(
                input_tokens=_words(request),
                output_tokens=len(text.split()),
            ),
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.history.append(request)
        if self.latency:
            await anyio.sleep(self.latency)
        return self._next(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | StreamEvent | ChatResponse]:
        self.history.append(request)
        if self.latency:
            await anyio.sleep(self.latency)
        response = self._next(request)
        if response.content or not response.tool_calls:
            words = response.content.split(" ")
            for index, word in enumerate(words):
                yield word if index == len(words) - 1 else word + " "
        for index, call in enumerate(response.tool_calls):
            yield ToolCallStart(index, call.id, call.name)
            raw = call.raw_arguments or json.dumps(call.arguments)
            for start in range(0, len(raw), 5):
                yield ToolCallDelta(index, raw[start : start + 5])
            yield ToolCallEnd(index, call)
        yield response

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        """Deterministic 4-dimension vectors (a digest of each text); `history` records
        the request too."""
        import hashlib

        self.embed_history.append(request)
        vectors = [
            [b / 255 for b in hashlib.blake2b(t.encode(), digest_size=4).digest()]
            for t in request.texts
        ]
        usage = Usage(input_tokens=sum(len(t.split()) for t in request.texts))
        return EmbedResponse(
            vectors=vectors, model=self.spec.model, provider=self.provider, usage=usage
        )

    async def aclose(self) -> None:
        self.closed = True


def _words(request: ChatRequest) -> int:
    return sum(len(m.text.split()) for m in request.messages)


class MockProvider:
    """A plugin serving `provider = "mock"` aliases from MockModel instances."""

    __name__ = "mock-provider"

    def __init__(self) -> None:
        self.models: dict[str, MockModel] = {}

    def add(self, alias: str, model: MockModel) -> MockModel:
        self.models[alias] = model
        return model

    @hookimpl
    def register_providers(self, register: Callable[..., None]) -> None:
        register(MockModel)

    @hookimpl
    def provide_model(self, spec: ModelSpec, herd: Herd) -> Model | None:
        if spec.provider != "mock":
            return None
        model = self.models.get(spec.alias)
        if model is None:
            model = self.models[spec.alias] = MockModel()
        model.spec = spec
        model.herd = herd
        return model


def make_herd(
    models: dict[str, MockModel] | None = None,
    *,
    config: dict[str, Any] | None = None,
    plugins: tuple[Any, ...] = (),
    load_entry_points: bool = False,
    fallbacks: dict[str, list[str]] | None = None,
) -> Herd:
    """A Herd whose aliases are MockModels (`models`), plus any extra config/plugins."""
    models = models if models is not None else {"mock": MockModel()}
    provider = MockProvider()
    tables: dict[str, dict[str, Any]] = {}
    for alias, model in models.items():
        provider.add(alias, model)
        tables[alias] = {"provider": "mock", "model": model.spec.model}
        if fallbacks and alias in fallbacks:
            tables[alias]["fallbacks"] = fallbacks[alias]
    data: dict[str, Any] = {
        "herd": {
            "default_model": next(iter(models), "mock"),
            "retries": 2,
            "backoff_base": 0.001,
            "backoff_max": 0.05,
        }
    }
    data["models"] = tables
    for key, value in (config or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    cfg = HerdConfig.model_validate(data)
    cfg.source = "test config"
    return Herd(cfg, env={}, load_entry_points=load_entry_points, plugins=(provider, *plugins))


@pytest.fixture
def mock_model() -> MockModel:
    """A fresh MockModel, served as alias "mock" by the `mock_herd` fixture."""
    return MockModel()


@pytest.fixture
def mock_herd(mock_model: MockModel) -> Iterator[Herd]:
    """A Herd with only the MockModel under alias "mock" (no installed plugins)."""
    herd = make_herd({"mock": mock_model})
    yield herd
    herd.close()


@pytest.fixture
def with_plugin(mock_herd: Herd) -> Iterator[Callable[[Any], Any]]:
    """Register a plugin on `mock_herd` for this test only: `with_plugin(obj)`."""
    added: list[Any] = []

    def register(plugin: Any) -> Any:
        mock_herd.register_plugin(plugin)
        added.append(plugin)
        return plugin

    yield register
    for plugin in added:
        if mock_herd.pm.is_registered(plugin):
            mock_herd.unregister_plugin(plugin)


def elapsed(func: Callable[[], Any]) -> float:
    """Seconds one call of `func` took (for bounded fault tests, not benchmarks)."""
    start = time.perf_counter()
    func()
    return time.perf_counter() - start
