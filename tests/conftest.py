"""Shared test setup: tests never read the developer's own config, keys or .env."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

_SECRET_VARS = [
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "DEEPSEEK_API_KEY",
    "GROQ_API_KEY",
    "XAI_API_KEY",
    "OPENROUTER_API_KEY",
    "ANTHROPIC_KEY",
    "OPENAI_KEY",
    "GEMINI_KEY",
    "DEEPSEEK_KEY",
    "GROK_API_KEY",
    "OLLAMA_HOST",
    "HERD_CONFIG",
    "HERD_PROFILE",
    "HERD_PLUGINS",
    "HERD_TRACE_HOOKS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SDK_DISABLED",
]


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for name in _SECRET_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    # platformdirs reads these: user config / data dirs land in a temp home
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    # herds started by tests write their `herd top` status files here, not in /tmp
    monkeypatch.setenv("HERD_STATUS_DIR", str(home / "status"))
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def trust_files() -> Callable[..., None]:
    """`trust_files(path, ...)`: what `herd trust PATH` does, for tests that put a
    plugins.toml or .env in the working directory (untrusted ones are ignored)."""
    from modelherd.trust import TrustStore

    def trust(*paths: Path) -> None:
        store = TrustStore()
        for path in paths:
            store.trust(path, path.read_bytes())

    return trust
