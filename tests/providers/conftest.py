"""Fixtures: one loopback server per vendor per module, and Herds wired to them."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from modelherd import Herd
from modelherd.config import HerdConfig

from . import fake_anthropic, fake_ollama, fake_openai
from .loopback import LoopbackServer


@pytest.fixture(scope="module")
def openai_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(fake_openai.make_app).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(fake_anthropic.make_app).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ollama_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(fake_ollama.make_app).start()
    yield server
    server.stop()


def provider_herd(
    plugin: ModuleType, models: dict[str, dict[str, Any]], env: dict[str, str], **herd_section: Any
) -> Herd:
    """A Herd with only `plugin` loaded, the given aliases, fast backoff, and `env` as keys."""
    section = {
        "default_model": next(iter(models)),
        "retries": 2,
        "backoff_base": 0.001,
        "backoff_max": 0.5,
        "timeout": 5.0,
        **herd_section,
    }
    config = HerdConfig.model_validate({"herd": section, "models": models})
    config.source = "test config"
    return Herd(config, env=env, load_entry_points=False, plugins=(plugin,))


@pytest.fixture
def herds() -> Iterator[list[Herd]]:
    """Collects Herds built in a test and closes each (clients, loops) afterwards."""
    made: list[Herd] = []
    yield made
    for herd in made:
        herd.close()
