"""The anthropic provider through the official anthropic SDK, on a loopback server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from modelherd import (
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    CallTimeoutError,
    ChatResponse,
    ConnectionDroppedError,
    ConnectionRefusedByServerError,
    Herd,
    ModelNotFoundError,
    ModelSpec,
    ProviderError,
    RateLimitError,
)
from modelherd.plugins.providers import anthropic as anthropic_provider
from modelherd.plugins.providers.anthropic import AnthropicModel

from .conftest import provider_herd
from .fake_anthropic import API_KEY
from .loopback import LoopbackServer, free_port

ENV = {"ANTHROPIC_API_KEY": API_KEY}


def make(
    server: LoopbackServer,
    herds: list[Herd],
    model: str = "echo-claude",
    *,
    env: dict[str, str] | None = None,
    **settings: Any,
) -> Herd:
    table = {"provider": "anthropic", "model": model, "base_url": server.url, **settings}
    herd = provider_herd(anthropic_provider, {"c": table}, ENV if env is None else env)
    herds.append(herd)
    return herd


async def _collect(herd: Herd, messages: Any, **kwargs: Any) -> tuple[list[str], ChatResponse]:
    chunks: list[str] = []
    final: ChatResponse | None = None
    try:
        async for item in herd.stream("c", messages, **kwargs):
            if isinstance(item, str):
                chunks.append(item)
            else:
                final = item
    finally:
        await herd.aclose()
    assert final is not None
    return chunks, final


def stream_all(
    herd: Herd, messages: Any = "hi there", **kwargs: Any
) -> tuple[list[str], ChatResponse]:
    return asyncio.run(_collect(herd, messages, **kwargs))


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_chat_maps_system_stop_and_cache_usage(anthropic_server, herds, transport):
    herd = make(anthropic_server, herds, transport=transport)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    response = herd.chat_sync("c", messages, temperature=0.1, stop="END", seed=3, top_p=0.5)
    assert response.content == "[be brief] echo: hello"
    assert response.finish_reason == "stop" and response.provider == "anthropic"
    assert response.usage.model_dump(exclude={"cost"}) == {
        "input_tokens": 12,
        "output_tokens": 6,
        "cache_read_tokens": 4,
        "cache_creation_tokens": 2,
    }
    assert response.request_id == "req_ok1"
    sent = anthropic_server.recorder.last("/v1/messages")
    body = sent["body"]
    assert body["system"] == "be brief" and body["messages"] == [
        {"role": "user", "content": "hello"}
    ]
    assert body["max_tokens"] == 4096  # the required field gets the alias default
    assert body["stop_sequences"] == ["END"] and "seed" not in body
    # the pinned SDK's Messages API has no sampling parameters: dropped unless asked for
    assert "temperature" not in body and "top_p" not in body
    assert API_KEY in (
        sent["headers"].get("x-api-key"),
        sent["headers"].get("Authorization", "")[7:],
    )
    assert sent["headers"].get("x-stainless-retry-count") == "0"


def test_sampling_params_sent_when_enabled(anthropic_server, herds):
    herd = make(anthropic_server, herds, sampling_params=True)
    herd.chat_sync("c", "x", temperature=0.0, top_k=5)
    body = anthropic_server.recorder.last("/v1/messages")["body"]
    assert (body["temperature"], body["top_k"]) == (0.0, 5)


def test_max_tokens_stop_reason_is_length(anthropic_server, herds):
    response = make(anthropic_server, herds).chat_sync("c", "x", max_tokens=1)
    assert response.finish_reason == "length"
    assert anthropic_server.recorder.last("/v1/messages")["body"]["max_tokens"] == 1


def test_thinking_blocks_go_to_reasoning(anthropic_server, herds):
    response = make(anthropic_server, herds, model="thinker").chat_sync("c", "x")
    assert (response.content, response.reasoning) == ("echo: x", "compare both")


def test_stream(anthropic_server, herds):
    chunks, final = stream_all(make(anthropic_server, herds))
    assert len(chunks) > 1 and "".join(chunks) == final.content == "echo: hi there"
    assert final.usage.input_tokens == 12 and final.usage.output_tokens == 6
    assert final.usage.cache_read_tokens == 4 and final.finish_reason == "stop"


def test_structured_output_uses_output_config(anthropic_server, herds):
    schema = {
        "type": "object",
        "properties": {"action": {"enum": ["HOLD", "BUY"]}},
        "required": ["action"],
        "additionalProperties": False,
    }
    response = make(anthropic_server, herds).chat_sync("c", "decide", response_format=schema)
    assert response.json_content() == {"action": "HOLD"}
    body = anthropic_server.recorder.last("/v1/messages")["body"]
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_json_object_mode_is_refused_with_the_fix(anthropic_server, herds):
    with pytest.raises(BadRequestError, match="needs a JSON schema — pass response_format="):
        make(anthropic_server, herds).chat_sync("c", "x", response_format={"type": "json_object"})


def test_wrong_key(anthropic_server, herds):
    herd = make(anthropic_server, herds, env={"ANTHROPIC_KEY": "sk-ant-wrong-999999"})
    with pytest.raises(AuthenticationError) as info:
        herd.chat_sync("c", "x")
    message = str(info.value)
    assert message == (
        "Anthropic refused the API key in ANTHROPIC_KEY (HTTP 401: invalid "
        "x-api-key) — check ANTHROPIC_KEY in the environment or .env"
    )


def test_unknown_model_lists_close_names(anthropic_server, herds):
    with pytest.raises(ModelNotFoundError) as info:
        make(anthropic_server, herds, model="claude-sonnet-9").chat_sync("c", "x")
    assert str(info.value).startswith(
        "Anthropic has no model 'claude-sonnet-9' — close names it offers: claude-sonnet-4-6"
    )


def test_429_retry_after(anthropic_server, herds):
    with pytest.raises(RateLimitError) as info:
        make(anthropic_server, herds, model="err-429").chat_sync("c", "x")
    assert info.value.retry_after == 7.0 and "retry after 7s" in str(info.value)


def test_529_overloaded_is_retried(anthropic_server, herds):
    anthropic_server.recorder.clear()
    response = make(anthropic_server, herds, model="flaky-529").chat_sync("c", "x")
    assert response.attempts == 2 and response.content == "echo: x"
    assert anthropic_server.recorder.counts["/v1/messages:flaky-529"] == 2


def test_500(anthropic_server, herds):
    with pytest.raises(
        ProviderError, match=r"Anthropic \(HTTP 500: Internal server error\) failed"
    ):
        make(anthropic_server, herds, model="err-500").chat_sync("c", "x")


def test_400_is_not_retried(anthropic_server, herds):
    anthropic_server.recorder.clear()
    with pytest.raises(BadRequestError, match="max_tokens: Field required"):
        make(anthropic_server, herds, model="err-400").chat_sync("c", "x")
    assert anthropic_server.recorder.counts["/v1/messages:err-400"] == 1


def test_timeout(anthropic_server, herds):
    started = time.perf_counter()
    with pytest.raises(CallTimeoutError, match=r"gave no answer within 0\.3s"):
        make(anthropic_server, herds, model="slow").chat_sync("c", "x", timeout=0.3)
    assert time.perf_counter() - started < 2.5


def test_connection_refused(herds):
    table = {"provider": "anthropic", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}"}
    herd = provider_herd(anthropic_provider, {"c": table}, ENV, retries=0)
    herds.append(herd)
    with pytest.raises(
        ConnectionRefusedByServerError, match=r"nothing is listening at Anthropic at http://127"
    ):
        herd.chat_sync("c", "x")


@pytest.mark.parametrize("model", ["malformed", "html"])
def test_malformed_body(anthropic_server, herds, model):
    with pytest.raises(BadResponseError, match=r"Anthropic at .* answered 'c' with a"):
        make(anthropic_server, herds, model=model).chat_sync("c", "x")


def test_stream_without_stop_reason(anthropic_server, herds):
    with pytest.raises(BadResponseError, match="ended without a stop reason"):
        stream_all(make(anthropic_server, herds, model="truncated"))


def test_error_event_in_stream_maps_to_overloaded(anthropic_server, herds):
    with pytest.raises(RateLimitError, match="is overloaded"):
        stream_all(make(anthropic_server, herds, model="stream-error"))


def test_dropped_stream_is_a_connection_error(anthropic_server, herds):
    with pytest.raises(ConnectionDroppedError, match=r"closed the connection|incomplete answer"):
        stream_all(make(anthropic_server, herds, model="drop"))


def test_only_system_messages(anthropic_server, herds):
    with pytest.raises(BadRequestError, match="got only system messages — add a user message"):
        make(anthropic_server, herds).chat_sync("c", [{"role": "system", "content": "x"}])


def test_availability_and_repr():
    spec = ModelSpec(alias="claude", provider="anthropic", model="claude-sonnet-4-6")
    assert AnthropicModel.availability(spec, {}).reason == "ANTHROPIC_API_KEY is not set"
    assert AnthropicModel.availability(spec, {"ANTHROPIC_KEY": "k"}).ok
    model = AnthropicModel(spec, Herd(env={"ANTHROPIC_API_KEY": API_KEY}, load_entry_points=False))
    assert API_KEY not in repr(model)


async def _health(herd: Herd) -> Any:
    try:
        return await herd.get_model("c").health()
    finally:
        await herd.aclose()


def test_health(anthropic_server, herds):
    health = asyncio.run(_health(make(anthropic_server, herds, model="claude-sonnet-4-6")))
    assert health.ok, health
    health = asyncio.run(_health(make(anthropic_server, herds, model="claude-sonnet-9")))
    assert not health.ok and "close names it offers: claude-sonnet-4-6" in health.detail
    herd = make(anthropic_server, herds, env={"ANTHROPIC_API_KEY": "bad-key-123456"})
    health = asyncio.run(_health(herd))
    assert not health.ok and health.fix == "check ANTHROPIC_API_KEY in the environment or .env"


def test_herd_chat_cli_with_claude_alias(anthropic_server, tmp_path: Path, monkeypatch):
    """`herd chat -m claude "..."` end to end: entry points, plugins.toml, trusted .env
    key, CLI."""
    from modelherd.cli import make_cli

    config = tmp_path / "plugins.toml"
    config.write_text(
        f'[models.claude]\nprovider = "anthropic"\nmodel = "claude-sonnet-4-6"\n'
        f'base_url = "{anthropic_server.url}"\n'
    )
    (tmp_path / ".env").write_text(f"ANTHROPIC_KEY={API_KEY}\n")  # the legacy name works too
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_KEY", raising=False)
    assert CliRunner().invoke(make_cli(), ["trust", ".env"]).exit_code == 0
    result = CliRunner().invoke(
        make_cli(), ["--config", str(config), "chat", "-m", "claude", "--json", "say hi"]
    )
    assert result.exit_code == 0, result.output
    assert (
        '"content": "echo: say hi"' in result.output and '"provider": "anthropic"' in result.output
    )
    assert API_KEY not in result.output
    streamed = CliRunner().invoke(
        make_cli(), ["--config", str(config), "chat", "-m", "claude", "yo"]
    )
    assert streamed.exit_code == 0 and streamed.output.startswith("echo: yo")
