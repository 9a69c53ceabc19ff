"""The stream timeout is an idle timeout: any event from the server restarts it —
reasoning deltas, Anthropic thinking and pings, `<think>` text, Ollama thinking lines —
and `deadline=` bounds the whole stream. Loopback servers think for ~0.9 s in deltas
0.15 s apart; the idle timeout is 0.5 s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from modelherd import CallTimeoutError, ChatResponse, KeepAlive, ReasoningDelta
from modelherd.plugins.providers import anthropic as anthropic_provider
from modelherd.plugins.providers import ollama as ollama_provider
from modelherd.plugins.providers import openai as openai_provider

from . import fake_anthropic, fake_openai
from .conftest import provider_herd

#: (provider, model on the loopback server, what the server streams while it thinks)
THINKERS = [
    ("openai", "slow-think", "reasoning_content deltas"),
    ("openai", "slow-tags", "<think> text"),
    ("anthropic", "slow-think", "thinking deltas"),
    ("anthropic", "slow-pings", "pings only"),
    ("ollama", "slow-think", "thinking lines"),
]


def _herd(request: pytest.FixtureRequest, herds: list[Any], provider: str, model: str) -> Any:
    server = request.getfixturevalue(f"{provider}_server")
    if provider == "ollama":
        table: dict[str, Any] = {"provider": "ollama", "model": model, "host": server.url}
        herd = provider_herd(ollama_provider, {"m": table}, {}, retries=0)
    elif provider == "openai":
        table = {"provider": "openai", "model": model, "base_url": f"{server.url}/v1"}
        env = {"OPENAI_API_KEY": fake_openai.API_KEY}
        herd = provider_herd(openai_provider, {"m": table}, env, retries=0)
    else:
        table = {"provider": "anthropic", "model": model, "base_url": server.url}
        env = {"ANTHROPIC_API_KEY": fake_anthropic.API_KEY}
        herd = provider_herd(anthropic_provider, {"m": table}, env, retries=0)
    herds.append(herd)
    return herd


def _collect(herd: Any, **kwargs: Any) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return [item async for item in herd.stream("m", "hi", **kwargs)]
        finally:
            await herd.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(("provider", "model", "what"), THINKERS)
def test_thinking_longer_than_the_timeout_is_not_killed(request, herds, provider, model, what):
    herd = _herd(request, herds, provider, model)
    started = time.perf_counter()
    items = _collect(herd, timeout=0.5)
    assert time.perf_counter() - started >= 0.9  # it thought for longer than the timeout
    final = items[-1]
    assert isinstance(final, ChatResponse) and final.content == "echo: hi", what
    assert items[:-1] and all(type(i) is str for i in items[:-1])  # plain stream: text only
    assert "".join(items[:-1]) == "echo: hi"
    if what != "pings only":
        assert (final.reasoning or "").count("step") == 6


@pytest.mark.parametrize(("provider", "model", "what"), THINKERS)
def test_events_show_reasoning_and_keepalives_as_they_come(request, herds, provider, model, what):
    herd = _herd(request, herds, provider, model)
    items = _collect(herd, timeout=0.5, events=True)
    assert isinstance(items[-1], ChatResponse) and items[-1].content == "echo: hi"
    reasoning = "".join(i.text for i in items if isinstance(i, ReasoningDelta))
    if what == "pings only":
        assert sum(isinstance(i, KeepAlive) for i in items) >= 6 and not reasoning
    else:
        assert reasoning.count("step") == 6, what


def test_idle_timeout_still_fires_when_the_server_goes_quiet(request, herds):
    herd = _herd(request, herds, "openai", "slow")  # sends nothing for 3 s
    with pytest.raises(CallTimeoutError, match=r"'m' \(openai\) sent nothing for 0\.3s"):
        _collect(herd, timeout=0.3)


@pytest.mark.parametrize(
    ("provider", "model"), [("anthropic", "slow-pings"), ("ollama", "slow-think")]
)
def test_deadline_bounds_the_whole_stream(request, herds, provider, model):
    herd = _herd(request, herds, provider, model)
    started = time.perf_counter()
    with pytest.raises(CallTimeoutError) as info:
        _collect(herd, timeout=0.5, deadline=0.4)
    assert time.perf_counter() - started < 0.85  # not the whole ~0.9 s of thinking
    assert info.value.message == (
        f"'m' ({provider}) did not finish streaming within its deadline of 0.4s — pass a "
        "larger deadline= (the idle timeout, which any event from the server restarts, "
        "did not fire)"
    )
    assert not info.value.retryable and not info.value.fallback_ok


def test_bad_deadline_is_one_line(request, herds):
    herd = _herd(request, herds, "ollama", "llama3.2")
    from modelherd import ConfigError

    with pytest.raises(ConfigError, match=r"^deadline=-1 is not a number of seconds > 0$"):
        _collect(herd, deadline=-1)
