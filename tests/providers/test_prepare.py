"""The SDK import and client setup happen in `prepare()`: outside the first attempt's
timeout and off the event loop (a slow import is simulated, so the test does not
depend on how fast this machine imports anthropic)."""

from __future__ import annotations

import importlib
import time
from typing import Any

import anyio
import pytest
from modelherd.plugins.providers import anthropic as anthropic_provider
from modelherd.plugins.providers import ollama as ollama_provider
from modelherd.plugins.providers import openai as openai_provider
from modelherd.plugins.providers import stainless

from . import fake_anthropic, fake_openai
from .conftest import provider_herd

SLOW_IMPORT_S = 1.5


@pytest.fixture
def slow_sdk_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing an SDK takes SLOW_IMPORT_S (blocking, like a real cold import)."""
    real = importlib.import_module
    for name in ("openai", "anthropic", "aiohttp"):  # the real (GIL-bound) imports
        real(name)  # happen first, so only the simulated blocking one is measured
    slow = {"openai", "anthropic"}

    def import_module(name: str, package: str | None = None) -> Any:
        if name in slow:
            slow.discard(name)  # the first import is the slow one
            time.sleep(SLOW_IMPORT_S)
        return real(name, package)

    monkeypatch.setattr(stainless.importlib, "import_module", import_module)
    for cls in (openai_provider.OpenAIModel, anthropic_provider.AnthropicModel):
        monkeypatch.setattr(cls, "_types", None)


def _herd(provider: str, server: Any) -> Any:
    if provider == "openai":
        table = {"provider": "openai", "model": "echo-model", "base_url": f"{server.url}/v1"}
        env = {"OPENAI_API_KEY": fake_openai.API_KEY}
        return provider_herd(openai_provider, {"m": table}, env, retries=0)
    table = {"provider": "anthropic", "model": "echo-claude", "base_url": server.url}
    env = {"ANTHROPIC_API_KEY": fake_anthropic.API_KEY}
    return provider_herd(anthropic_provider, {"m": table}, env, retries=0)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_first_call_with_a_short_timeout_is_not_spent_importing(
    request, herds, slow_sdk_import, provider
):
    server = request.getfixturevalue(f"{provider}_server")
    herd = _herd(provider, server)
    herds.append(herd)
    stalls: list[float] = []

    async def main() -> str:
        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await anyio.sleep(0.02)
                now = time.perf_counter()
                stalls.append(now - last)
                last = now

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            started = time.perf_counter()
            response = await herd.chat("m", "hi", timeout=0.3)
            assert time.perf_counter() - started >= SLOW_IMPORT_S  # the import did happen
            tg.cancel_scope.cancel()
        await herd.aclose()
        return str(response.content)

    assert anyio.run(main) == "echo: hi"  # not CallTimeoutError "no answer within 0.3s"
    # the loop kept running during the simulated import (before: one stall of >= 1.5 s;
    # the SDK's real first-use work on a loaded machine still costs a few tenths)
    assert max(stalls) < 1.0


def test_ollama_prepares_its_client_before_the_first_attempt(ollama_server, herds):
    table = {"provider": "ollama", "model": "llama3.2", "host": ollama_server.url}
    herd = provider_herd(ollama_provider, {"m": table}, {})
    herds.append(herd)
    model = herd.get_model("m")

    async def main() -> None:
        await model.prepare()
        assert model.client() is model.client()  # built once, for this loop
        response = await herd.chat("m", "hi")
        assert response.content == "echo: hi"
        await herd.aclose()

    anyio.run(main)
