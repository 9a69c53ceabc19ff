"""Residency with the real ollama provider against the loopback Ollama server of
tests/providers (tags, ps, chat, keep_alive 0 unloads): eviction frees the server's
memory and keep_alive reaches the wire."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "ollama", reason='the ollama SDK is not installed — pip install "modelherd[ollama]"'
)
pytest.importorskip("aiohttp", reason="the loopback Ollama server needs aiohttp (dev extra)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the `providers` package
from modelherd.config import HerdConfig
from modelherd.kernel import Herd
from modelherd.plugins.cache import residency
from modelherd.plugins.providers import ollama as ollama_provider
from providers.fake_ollama import make_app
from providers.loopback import LoopbackServer


@pytest.fixture(scope="module")
def ollama_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(make_app).start()
    yield server
    server.stop()


def herd_for(server: LoopbackServer, settings: dict[str, Any]) -> Herd:
    models = {
        "small": {"provider": "ollama", "model": "llama3.2", "host": server.url},
        "big": {"provider": "ollama", "model": "qwen3", "host": server.url},
    }
    config = HerdConfig.model_validate(
        {
            "herd": {"default_model": "small", "retries": 0, "timeout": 5.0},
            "models": models,
            "plugins": {"residency": settings},
        }
    )
    config.source = "test config"
    return Herd(config, env={}, load_entry_points=False, plugins=(ollama_provider, residency))


def test_eviction_unloads_from_the_ollama_server(ollama_server: LoopbackServer) -> None:
    from modelherd.plugins.providers.ollama.admin import ps

    herd = herd_for(ollama_server, {"max_models": 1})

    async def go() -> tuple[list[str], list[str]]:
        async with herd:
            await herd.chat("small", "hi", cache="no-store")
            model = herd.get_model("small")
            loaded_before = [m["name"] for m in await ps(model.client())]
            await herd.chat("big", "hi", cache="no-store")  # max_models=1: "small" must go
            probe = herd.get_model("big")
            loaded_after = [m["name"] for m in await ps(probe.client())]
            return loaded_before, loaded_after

    before, after = asyncio.run(go())
    assert "llama3.2:latest" in before
    assert "llama3.2:latest" not in after and "qwen3:latest" in after
    rec = ollama_server.recorder
    unloads = [
        r for r in rec.requests if r["path"] == "/api/generate" and r["body"].get("keep_alive") == 0
    ]
    assert [r["body"]["model"] for r in unloads][:1] == ["llama3.2:latest"]
    chats = [r for r in rec.requests if r["path"] == "/api/chat"]
    assert chats and all(r["body"].get("keep_alive") == "10m" for r in chats)
