"""`herd.embed` through the official SDKs against loopback servers: OpenAI's
`POST /embeddings` and Ollama's `POST /api/embed`; batching, per-text caching,
coalescing, metrics, spans, and the errors a user can hit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from modelherd import BadRequestError, ConfigError, Herd, ModelNotFoundError, hookimpl
from modelherd.events import EmbeddingsDone
from modelherd.plugins.cache import memory
from modelherd.plugins.providers import anthropic as anthropic_provider
from modelherd.plugins.providers import ollama as ollama_provider
from modelherd.plugins.providers import openai as openai_provider

from . import fake_anthropic, fake_openai
from .conftest import provider_herd
from .loopback import LoopbackServer, vector_for


class Seen:
    __name__ = "seen"

    def __init__(self) -> None:
        self.metrics: list[Any] = []
        self.events: list[Any] = []

    @hookimpl
    def on_metric(self, metric: Any, herd: Any) -> None:
        self.metrics.append(metric)

    @hookimpl
    def track_event(self, event: Any, herd: Any) -> None:
        self.events.append(event)


def openai_herd(server: LoopbackServer, herds: list[Herd], *plugins: Any) -> Herd:
    table = {
        "provider": "openai",
        "model": "text-embedding-3-small",
        "base_url": f"{server.url}/v1",
    }
    herd = provider_herd(
        openai_provider, {"e": table}, {"OPENAI_API_KEY": fake_openai.API_KEY}, timeout=30.0
    )
    for plugin in plugins:
        herd.register_plugin(plugin)
    herds.append(herd)
    return herd


def ollama_herd(server: LoopbackServer, herds: list[Herd], *plugins: Any) -> Herd:
    table = {"provider": "ollama", "model": "nomic-embed-text", "host": server.url}
    herd = provider_herd(ollama_provider, {"e": table}, {}, timeout=30.0)
    for plugin in plugins:
        herd.register_plugin(plugin)
    herds.append(herd)
    return herd


def embed(herd: Herd, texts: Any, **kwargs: Any) -> Any:
    async def go() -> Any:
        return await herd.embed("e", texts, **kwargs)

    if herd._runner is None:
        herd._runner = asyncio.Runner()
    return herd._runner.run(go())


@pytest.mark.parametrize("vendor", ["openai", "ollama"])
def test_vectors_in_order_with_usage(vendor, openai_server, ollama_server, herds):
    herd = (
        openai_herd(openai_server, herds)
        if vendor == "openai"
        else ollama_herd(ollama_server, herds)
    )
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    result = embed(herd, texts)
    assert result.vectors == [vector_for(t) for t in texts]
    assert result.dimensions == 8 and result.usage.input_tokens == 6
    assert result.provider == vendor and result.cached == 0
    single = embed(herd, "gamma")
    assert single.vectors == [vector_for("gamma")]


def test_batches_of_the_given_size(openai_server, herds):
    herd = openai_herd(openai_server, herds)
    openai_server.recorder.clear()
    texts = [f"text {i}" for i in range(10)]
    result = embed(herd, [*texts, "text 3"], batch_size=4)  # a repeat is sent once
    sizes = sorted(len(r["body"]["input"]) for r in openai_server.recorder.requests)
    assert sizes == [2, 4, 4]
    assert result.vectors[-1] == result.vectors[3] == vector_for("text 3")
    assert openai_server.recorder.requests[0]["body"]["encoding_format"] == "float"


def test_each_text_is_cached_and_only_misses_go_upstream(ollama_server, herds):
    herd = ollama_herd(ollama_server, herds)
    herd.register_plugin(memory)
    ollama_server.recorder.clear()
    embed(herd, ["one", "two"])
    again = embed(herd, ["two", "three", "one"])
    assert again.cached == 2 and again.vectors == [vector_for(t) for t in ("two", "three", "one")]
    bodies = [
        r["body"]["input"] for r in ollama_server.recorder.requests if r["path"] == "/api/embed"
    ]
    assert bodies == [["one", "two"], ["three"]]
    fresh = embed(herd, ["one"], cache="no-cache")
    assert fresh.cached == 0 and len(ollama_server.recorder.requests) == 3


def test_identical_batches_in_flight_share_one_call(openai_server, herds):
    herd = openai_herd(openai_server, herds)
    openai_server.recorder.clear()

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                herd.embed("e", ["same", "texts"]), herd.embed("e", ["same", "texts"])
            )
        )

    if herd._runner is None:
        herd._runner = asyncio.Runner()
    first, second = herd._runner.run(both())
    assert first.vectors == second.vectors
    assert len([r for r in openai_server.recorder.requests if r["path"] == "/v1/embeddings"]) == 1


def test_metrics_and_events_name_the_embeddings_operation(openai_server, herds):
    seen = Seen()
    herd = openai_herd(openai_server, herds, seen)
    embed(herd, ["a b", "c"])
    durations = [m for m in seen.metrics if m.name == "gen_ai.client.operation.duration"]
    assert durations[0].attributes["gen_ai.operation.name"] == "embeddings"
    tokens = [m for m in seen.metrics if m.name == "gen_ai.client.token.usage"]
    assert tokens[0].value == 3 and tokens[0].attributes["gen_ai.token.type"] == "input"
    (event,) = [e for e in seen.events if isinstance(e, EmbeddingsDone)]
    assert (event.count, event.input_tokens, event.error_type) == (2, 3, None)


def test_a_provider_without_embeddings_says_which_do(anthropic_server, herds):
    table = {"provider": "anthropic", "model": "claude-haiku-4-5", "base_url": anthropic_server.url}
    herd = provider_herd(
        anthropic_provider, {"e": table}, {"ANTHROPIC_API_KEY": fake_anthropic.API_KEY}
    )
    herds.append(herd)
    with pytest.raises(BadRequestError) as info:
        embed(herd, ["x"])
    assert str(info.value) == (
        "'e' (anthropic) does not make embeddings — use an alias on openai, "
        "openai_compatible, ollama or llamacpp with an embedding model (docs/tools.md)"
    )


def test_embed_errors_a_user_can_hit(openai_server, ollama_server, herds):
    herd = openai_herd(openai_server, herds)
    with pytest.raises(ConfigError, match="texts is empty — pass a string or a list of strings"):
        embed(herd, [])
    with pytest.raises(ConfigError, match="embed takes strings — convert each item to str first"):
        embed(herd, ["a", 3])
    with pytest.raises(ConfigError, match="cache='only' is not a mode for embed"):
        embed(herd, ["a"], cache="only")
    with pytest.raises(
        BadRequestError,
        match="option 'truncate' is not valid for the openai provider \\(for embeddings\\) — allowed: dimensions, user",
    ):
        embed(herd, ["a"], truncate=True)
    table = {"provider": "ollama", "model": "not-pulled", "host": ollama_server.url}
    missing = provider_herd(ollama_provider, {"e": table}, {}, timeout=30.0)
    herds.append(missing)
    with pytest.raises(ModelNotFoundError) as info:
        embed(missing, ["a"])
    assert str(info.value).endswith(
        "has no model 'not-pulled:latest' — run `herd pull not-pulled:latest`"
    )
