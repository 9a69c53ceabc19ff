"""Faults between us and the vendor, through the official SDKs on loopback: each one
its own typed error and message; unfinished answers never pass as complete; the
SDK's own exception (which may echo the key) never rides along in a traceback."""

from __future__ import annotations

import socket
import time
import traceback
from typing import Any

import pytest
from modelherd import (
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    CallTimeoutError,
    ConnectionDroppedError,
    ConnectionRefusedByServerError,
    Herd,
    HerdError,
    HostNotFoundError,
    RateLimitError,
)
from modelherd.plugins.providers import anthropic as anthropic_provider
from modelherd.plugins.providers import ollama as ollama_provider
from modelherd.plugins.providers import openai as openai_provider

from . import fake_anthropic, fake_openai
from .conftest import provider_herd
from .loopback import LoopbackServer, free_port

#: (provider, transport) pairs: both HTTP stacks the Stainless SDKs can run on
CLOUD = [
    ("openai", "aiohttp"),
    ("openai", "httpx"),
    ("anthropic", "aiohttp"),
    ("anthropic", "httpx"),
]
ALL = [*CLOUD, ("ollama", None)]


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under .invalid do not resolve — decided here, so no resolver is asked
    (the tests stay on 127.0.0.1); every other name resolves as usual."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _herd(provider: str, transport: str | None, model: str, url: str, **herd: Any) -> Herd:
    if provider == "ollama":
        table: dict[str, Any] = {"provider": "ollama", "model": model, "host": url}
        return provider_herd(ollama_provider, {"m": table}, {}, **herd)
    plugin = openai_provider if provider == "openai" else anthropic_provider
    base = f"{url}/v1" if provider == "openai" else url
    table = {"provider": provider, "model": model, "base_url": base, "transport": transport}
    key = fake_openai.API_KEY if provider == "openai" else fake_anthropic.API_KEY
    env = {"OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY": key}
    return provider_herd(plugin, {"m": table}, env, **herd)


def _server(request: pytest.FixtureRequest, provider: str) -> LoopbackServer:
    server: LoopbackServer = request.getfixturevalue(f"{provider}_server")
    return server


def _name(provider: str, model: str) -> str:
    return f"{model}:latest" if provider == "ollama" else model


def _fail(herd: Herd, herds: list[Herd], **kwargs: Any) -> HerdError:
    herds.append(herd)
    with pytest.raises(HerdError) as info:
        herd.chat_sync("m", "hi", **kwargs)
    return info.value


VENDOR = {"openai": "OpenAI", "anthropic": "Anthropic", "ollama": "Ollama"}


@pytest.mark.parametrize(("provider", "transport"), ALL)
def test_dns_failure_is_its_own_error_not_a_timeout(herds, no_dns, provider, transport):
    error = _fail(
        _herd(provider, transport, _name(provider, "echo"), "http://nohost.invalid:9"), herds
    )
    assert type(error) is HostNotFoundError, error
    assert error.message.startswith(
        f"cannot resolve the host name of {VENDOR[provider]} at http://nohost.invalid:9"
    )
    assert "(Name or service not known)" in error.message and "typo" in error.message
    assert "in time" not in error.message
    assert not error.retryable  # a typo does not heal in a second; the fallback may help


@pytest.mark.parametrize(("provider", "transport"), ALL)
def test_connection_refused(herds, provider, transport):
    url = f"http://127.0.0.1:{free_port()}"
    error = _fail(_herd(provider, transport, _name(provider, "echo"), url), herds, timeout=3)
    assert type(error) is ConnectionRefusedByServerError, error
    if provider == "ollama":
        assert error.message.startswith(f"Ollama is not running at {url} — start it with")
    else:
        assert f"nothing is listening at {VENDOR[provider]} at {url}" in error.message
        assert "(connection refused) — start the server, or fix base_url" in error.message


@pytest.mark.parametrize(("provider", "transport"), ALL)
def test_reset_is_dropped_not_unreachable(request, herds, provider, transport):
    server = _server(request, provider)
    herd = _herd(provider, transport, _name(provider, "reset"), server.url, retries=0)
    error = _fail(herd, herds)
    assert type(error) is ConnectionDroppedError, error
    assert "closed the connection before answering 'm' (ConnectionResetError)" in error.message
    assert "the server was reached; the call can be retried" in error.message
    assert "check the network" not in error.message and error.retryable


@pytest.mark.parametrize(("provider", "transport"), ALL)
def test_truncated_body_is_dropped_not_unreachable(request, herds, provider, transport):
    server = _server(request, provider)
    herd = _herd(provider, transport, _name(provider, "cut-body"), server.url, retries=0)
    error = _fail(herd, herds)
    assert type(error) is ConnectionDroppedError, error
    assert "sent an incomplete answer for 'm' (the connection closed before the body" in (
        error.message
    )
    assert "cannot reach" not in error.message


@pytest.mark.parametrize(("provider", "transport"), ALL)
def test_timeout_says_timeout(request, herds, provider, transport):
    server = _server(request, provider)
    herd = _herd(provider, transport, _name(provider, "slow"), server.url, retries=0)
    error = _fail(herd, herds, timeout=0.3)
    assert type(error) is CallTimeoutError
    assert error.message.startswith("'m' (") and "gave no answer within 0.3s" in error.message


@pytest.mark.parametrize(
    ("provider", "transport", "sign"),
    [
        (p, t, {"openai": "finish_reason null", "anthropic": "stop_reason null"}.get(p))
        for p, t in ALL
    ],
)
def test_unfinished_answer_is_a_retryable_bad_response(request, herds, provider, transport, sign):
    """OpenAI finish_reason null, Anthropic stop_reason null, Ollama "done": false: a
    well-formed 200 that is not a finished answer is never returned as complete."""
    server = _server(request, provider)
    server.recorder.clear()
    herd = _herd(provider, transport, _name(provider, "unfinished"), server.url, retries=1)
    error = _fail(herd, herds)
    assert type(error) is BadResponseError and error.retryable
    sign = sign or '"done": false'
    assert f"answered 'm' without finishing ({sign}) — the answer may be cut off" in error.message
    chat_path = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
    path = chat_path.get(provider, "/api/chat")
    assert sum(1 for r in server.recorder.requests if r["path"] == path) == 2  # retried once


@pytest.mark.parametrize(("provider", "transport"), CLOUD)
def test_sdk_exception_is_not_chained_so_an_echoed_key_stays_out(
    request, herds, provider, transport
):
    server = _server(request, provider)
    key = fake_openai.API_KEY if provider == "openai" else fake_anthropic.API_KEY
    error = _fail(_herd(provider, transport, "echo-key", server.url), herds)
    assert isinstance(error, BadRequestError)
    assert error.__cause__ is None and error.__context__ is None
    text = "".join(traceback.format_exception(error))
    assert key not in text and "bad request from" in text


def test_ollama_long_retry_after_goes_to_the_fallback(ollama_server, herds):
    """A 30 s Retry-After is not waited for nor ignored: the fallback answers at once."""
    models = {
        "m": {"provider": "ollama", "model": "busy", "host": ollama_server.url, "fallbacks": ["b"]},
        "b": {"provider": "ollama", "model": "llama3.2", "host": ollama_server.url},
    }
    herd = provider_herd(ollama_provider, models, {})
    herds.append(herd)
    ollama_server.recorder.clear()
    started = time.perf_counter()
    response = herd.chat_sync("m", "hi")
    assert response.content == "echo: hi" and response.fallback_from == "m"
    assert time.perf_counter() - started < 3.0
    busy = [r for r in ollama_server.recorder.requests if r["body"].get("model") == "busy:latest"]
    assert len(busy) == 1  # not retried: a quick retry would be refused again


def test_ollama_429_carries_retry_after(ollama_server, herds):
    error = _fail(_herd("ollama", None, "busy", ollama_server.url), herds)
    assert type(error) is RateLimitError and error.retry_after == 30.0
    assert "is busy (HTTP 429: server busy, please try again) — retry after 30s" in error.message


def test_ollama_short_retry_after_is_waited_then_retried(ollama_server, herds):
    ollama_server.recorder.clear()
    herd = _herd("ollama", None, "flaky-busy", ollama_server.url)
    herds.append(herd)
    started = time.perf_counter()
    response = herd.chat_sync("m", "hi")  # 503 with Retry-After 0.05, then the answer
    assert response.content == "echo: hi" and response.attempts == 2
    assert time.perf_counter() - started >= 0.05


def test_ollama_401_is_an_auth_error_not_retried(ollama_server, herds):
    ollama_server.recorder.clear()
    error = _fail(_herd("ollama", None, "locked", ollama_server.url), herds)
    assert type(error) is AuthenticationError and not error.retryable
    assert "refused the call (HTTP 401: unauthorized) — a server behind authentication" in (
        error.message
    )
    assert "OLLAMA_API_KEY" in error.message
    chats = [r for r in ollama_server.recorder.requests if r["path"] == "/api/chat"]
    assert len(chats) == 1


@pytest.mark.parametrize(("provider", "transport"), CLOUD)
def test_request_id_has_one_format_streamed_or_not(request, herds, provider, transport):
    """The vendor's request id (its response header), whether the call streamed or not —
    before, a stream reported the completion / message id instead (`chatcmpl-…`, `msg_…`)."""
    import asyncio

    server = _server(request, provider)
    model = "echo-model" if provider == "openai" else "echo-claude"
    herd = _herd(provider, transport, model, server.url)
    herds.append(herd)
    plain = herd.chat_sync("m", "hi", cache="no-store")

    async def streamed() -> Any:
        try:
            return [item async for item in herd.stream("m", "hi", cache="no-store")][-1]
        finally:
            await herd.aclose()

    final = asyncio.run(streamed())
    assert plain.request_id is not None and final.request_id is not None
    assert plain.request_id.startswith("req_") and final.request_id.startswith("req_")
