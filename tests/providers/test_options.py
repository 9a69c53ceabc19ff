"""Per-call options are checked per provider before anything is sent, each mistake one
line (exit code 2); a pydantic model class is a response_format on every provider."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from modelherd import Herd, InvalidOptionError
from modelherd.plugins.providers import anthropic as anthropic_provider
from modelherd.plugins.providers import ollama as ollama_provider
from modelherd.plugins.providers import openai as openai_provider
from pydantic import BaseModel

from . import fake_anthropic, fake_openai
from .conftest import provider_herd
from .loopback import LoopbackServer

PROVIDERS = ["openai", "anthropic", "ollama"]
CHAT_PATH = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}


class Decision(BaseModel):
    action: str
    confidence: float


def _make(request: pytest.FixtureRequest, herds: list[Herd], provider: str) -> Herd:
    server: LoopbackServer = request.getfixturevalue(f"{provider}_server")
    server.recorder.clear()
    if provider == "ollama":
        table: dict[str, Any] = {"provider": "ollama", "model": "llama3.2", "host": server.url}
        herd = provider_herd(ollama_provider, {"m": table}, {})
    elif provider == "openai":
        table = {"provider": "openai", "model": "echo-model", "base_url": f"{server.url}/v1"}
        herd = provider_herd(openai_provider, {"m": table}, {"OPENAI_API_KEY": fake_openai.API_KEY})
    else:
        table = {"provider": "anthropic", "model": "echo-claude", "base_url": server.url}
        env = {"ANTHROPIC_API_KEY": fake_anthropic.API_KEY}
        herd = provider_herd(anthropic_provider, {"m": table}, env)
    herds.append(herd)
    herd.test_server = server  # type: ignore[attr-defined]
    return herd


def _sent(herd: Herd, provider: str) -> list[dict[str, Any]]:
    server: LoopbackServer = herd.test_server  # type: ignore[attr-defined]
    return [r["body"] for r in server.recorder.requests if r["path"] == CHAT_PATH[provider]]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"max_tokens": -5},
            "option max_tokens=-5 is not valid for the {p} provider "
            "(input should be greater than or equal to 1) — pass a value it accepts",
        ),
        (
            {"temperature": 1e9},
            "option temperature=1000000000.0 is not valid for the {p} "
            "provider (input should be less than or equal to {t})",
        ),
        (
            {"top_p": 3},
            "option top_p=3 is not valid for the {p} provider "
            "(input should be less than or equal to 1)",
        ),
        ({"foo": "bar"}, "option 'foo' is not valid for the {p} provider"),
    ],
)
def test_bad_options_are_one_line_and_nothing_is_sent(request, herds, provider, options, message):
    herd = _make(request, herds, provider)
    with pytest.raises(InvalidOptionError) as info:
        herd.chat_sync("m", "hi", **options)
    top = "1" if provider == "anthropic" else "2"
    assert info.value.message.startswith(message.format(p=provider, t=top)), info.value.message
    assert "\n" not in info.value.message and info.value.exit_code == 2
    assert _sent(herd, provider) == []


def test_claude_temperature_out_of_its_range_is_an_error_not_dropped(request, herds):
    herd = _make(request, herds, "anthropic")
    with pytest.raises(
        InvalidOptionError,
        match=r"option temperature=5 is not valid for the "
        r"anthropic provider \(input should be less than or equal to 1\)",
    ):
        herd.chat_sync("m", "hi", temperature=5)


def test_claude_temperature_not_sent_says_so(request, herds, caplog):
    herd = _make(request, herds, "anthropic")
    with caplog.at_level(logging.WARNING, logger="modelherd.providers.anthropic"):
        herd.chat_sync("m", "hi", temperature=0.5)
        herd.chat_sync("m", "again", temperature=0.5)
    assert "temperature" not in _sent(herd, "anthropic")[0]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "'m' (anthropic): option temperature is not sent — the Messages API of the pinned "
        "SDK takes no sampling parameters; set sampling_params = true in [models.m] to send "
        "it (a proxy or an older model)"
    ]  # once per alias, not per call


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_pydantic_class_is_a_response_format_everywhere(request, herds, provider):
    herd = _make(request, herds, provider)
    response = herd.chat_sync("m", "decide", response_format=Decision)
    decision = Decision.model_validate_json(response.content)
    assert isinstance(decision.confidence, float)
    body = _sent(herd, provider)[0]
    schema = {
        "openai": lambda: body["response_format"]["json_schema"]["schema"],
        "anthropic": lambda: body["output_config"]["format"]["schema"],
        "ollama": lambda: body["format"],
    }[provider]()
    assert schema == Decision.model_json_schema()
