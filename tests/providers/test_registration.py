"""Provider plugins load through the entry points without importing any SDK, and the
built-in aliases are judged available or not without a network call."""

from __future__ import annotations

import json
import subprocess
import sys

from modelherd import Herd

PROVIDERS = {
    "ollama",
    "anthropic",
    "openai",
    "deepseek",
    "groq",
    "xai",
    "openrouter",
    "gemini",
    "openai_compatible",
}


def test_loading_the_plugins_imports_no_sdk():
    code = (
        "import sys, json\n"
        "from modelherd import Herd\n"
        "h = Herd(env={})\n"
        "names = sorted(h.providers)\n"
        "for alias in h.config.models:\n"
        "    spec = h.resolve(alias)\n"
        "    cls = h.providers.get(spec.provider)\n"
        "    cls and cls.availability(spec, {})\n"
        "heavy = [m for m in ('openai', 'anthropic', 'ollama', 'httpx2', 'aiohttp') if m in sys.modules]\n"
        "print(json.dumps({'providers': names, 'heavy': heavy}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["providers"]) >= PROVIDERS
    assert result["heavy"] == []


def test_builtin_aliases_and_availability_without_keys():
    herd = Herd(env={"ANTHROPIC_KEY": "k", "GROK_API_KEY": "k"})
    expected = {
        "claude": "anthropic",
        "gpt": "openai",
        "deepseek": "deepseek",
        "groq": "groq",
        "grok": "xai",
        "gemini": "gemini",
        "openrouter": "openrouter",
        "llama3.2": "ollama",
    }
    for alias, provider in expected.items():
        spec = herd.resolve(alias)
        assert spec.provider == provider and spec.model
        avail = herd.providers[provider].availability(spec, herd.env)
        # legacy names count; a missing key names the standard variable
        if provider in ("anthropic", "xai", "ollama"):
            assert avail.ok, (alias, avail)
        else:
            assert not avail.ok and avail.reason.endswith("_API_KEY is not set")


def test_provider_slash_model_resolves():
    herd = Herd(env={})
    spec = herd.resolve("ollama/qwen3")
    assert (spec.provider, spec.model) == ("ollama", "qwen3")
    assert herd.get_model("ollama/qwen3").name == "qwen3:latest"
