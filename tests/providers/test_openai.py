"""The openai provider and its presets, through the official openai SDK, on loopback."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from modelherd import (
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    CallTimeoutError,
    ChatResponse,
    ConfigError,
    ConnectionRefusedByServerError,
    Herd,
    ModelNotFoundError,
    ModelSpec,
    ProviderError,
    RateLimitError,
)
from modelherd.plugins.providers import keys
from modelherd.plugins.providers import openai as openai_provider
from modelherd.plugins.providers.openai import OpenAICompatibleModel, OpenAIModel

from .conftest import provider_herd
from .fake_openai import API_KEY
from .loopback import LoopbackServer, free_port

ENV = {"OPENAI_API_KEY": API_KEY}


def make(
    server: LoopbackServer,
    herds: list[Herd],
    model: str = "echo-model",
    *,
    provider: str = "openai",
    env: dict[str, str] | None = None,
    **settings: Any,
) -> Herd:
    table = {"provider": provider, "model": model, "base_url": f"{server.url}/v1", **settings}
    herd = provider_herd(openai_provider, {"m": table}, ENV if env is None else env)
    herds.append(herd)
    return herd


def stream_all(herd: Herd, **kwargs: Any) -> tuple[list[str], ChatResponse]:
    async def go() -> tuple[list[str], ChatResponse]:
        chunks: list[str] = []
        final: ChatResponse | None = None
        async for item in herd.stream("m", "hi there", **kwargs):
            if isinstance(item, str):
                chunks.append(item)
            else:
                final = item
        assert final is not None
        return chunks, final

    import asyncio

    return asyncio.run(_closing(herd, go()))


async def _closing(herd: Herd, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await herd.aclose()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_chat_maps_options_usage_and_request_id(openai_server, herds, transport):
    herd = make(openai_server, herds, transport=transport)
    response = herd.chat_sync(
        "m", "hello", temperature=0.2, max_tokens=50, seed=7, stop=["\n\n"], top_p=0.9
    )
    assert response.content == "echo: hello"
    assert (response.provider, response.model, response.finish_reason) == (
        "openai",
        "echo-model",
        "stop",
    )
    assert response.usage.input_tokens == 11 and response.usage.output_tokens == 5
    assert response.usage.cache_read_tokens == 3
    assert response.request_id == "req_ok"
    sent = openai_server.recorder.last("/v1/chat/completions")
    body = sent["body"]
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert (body["temperature"], body["seed"], body["stop"], body["top_p"]) == (
        0.2,
        7,
        ["\n\n"],
        0.9,
    )
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    # SDK-internal retries are off: the kernel decides
    assert sent["headers"].get("x-stainless-retry-count") == "0"


def test_length_finish_reason(openai_server, herds):
    assert make(openai_server, herds).chat_sync("m", "x", max_tokens=1).finish_reason == "length"


def test_stream_yields_chunks_then_response_with_usage(openai_server, herds):
    chunks, final = stream_all(make(openai_server, herds))
    assert len(chunks) > 1 and "".join(chunks) == "echo: hi there" == final.content
    assert final.usage.output_tokens == 5 and final.finish_reason == "stop"
    assert openai_server.recorder.last("/v1/chat/completions")["body"]["stream_options"] == {
        "include_usage": True
    }


def test_structured_output_sends_json_schema(openai_server, herds):
    schema = {
        "title": "Decision",
        "type": "object",
        "properties": {"action": {"enum": ["BUY", "SELL"]}, "confidence": {"type": "number"}},
        "required": ["action", "confidence"],
    }
    response = make(openai_server, herds).chat_sync("m", "decide", response_format=schema)
    assert response.json_content() == {"action": "BUY", "confidence": 0.5}
    sent = openai_server.recorder.last("/v1/chat/completions")["body"]["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "Decision", "schema": schema, "strict": False},
    }


def test_json_object_mode_passes_through(openai_server, herds):
    response = make(openai_server, herds).chat_sync(
        "m", "x", response_format={"type": "json_object"}
    )
    assert response.json_content() == {"ok": True}


def test_think_block_moves_to_reasoning(openai_server, herds):
    response = make(openai_server, herds, model="reason").chat_sync("m", "x")
    assert (response.content, response.reasoning) == ("BUY", "weigh the options")
    chunks, final = stream_all(make(openai_server, herds, model="reason"))
    assert "".join(chunks) == "BUY" and final.reasoning == "weigh the options"


def test_wrong_key_names_the_variable_never_the_key(openai_server, herds):
    herd = make(openai_server, herds, env={"OPENAI_API_KEY": "sk-wrong-0000000000cdef"})
    with pytest.raises(AuthenticationError) as info:
        herd.chat_sync("m", "x")
    message = str(info.value)
    assert "refused the API key in OPENAI_API_KEY" in message
    assert "check OPENAI_API_KEY in the environment or .env" in message
    assert "sk-wrong" not in message and "sk-wron" not in message and "0000" not in message
    assert openai_server.recorder.counts["/v1/chat/completions:echo-model"] >= 1


def test_401_is_never_retried(openai_server, herds):
    openai_server.recorder.clear()
    with pytest.raises(AuthenticationError) as info:
        make(openai_server, herds, model="err-401").chat_sync("m", "x")
    assert API_KEY[:8] not in str(info.value)
    assert openai_server.recorder.counts["/v1/chat/completions:err-401"] == 1


def test_unknown_model_lists_close_names(openai_server, herds):
    openai_server.recorder.clear()
    with pytest.raises(ModelNotFoundError) as info:
        make(openai_server, herds, model="gpt-99-mini").chat_sync("m", "x")
    message = str(info.value)
    assert message.startswith("OpenAI has no model 'gpt-99-mini' — close names it offers: ")
    assert "gpt-5.4-mini" in message and "set model" in message
    assert openai_server.recorder.counts["/v1/chat/completions:gpt-99-mini"] == 1


def test_429_carries_retry_after_and_long_waits_are_not_slept(openai_server, herds):
    openai_server.recorder.clear()
    started = time.perf_counter()
    with pytest.raises(RateLimitError) as info:
        make(openai_server, herds, model="err-429").chat_sync("m", "x")
    assert info.value.retry_after == 7.0
    assert "retry after 7s" in str(info.value) and "fallback" in str(info.value)
    assert time.perf_counter() - started < 2  # 7 s is over backoff_max: no wait, no retry
    assert openai_server.recorder.counts["/v1/chat/completions:err-429"] == 1


def test_429_then_success_is_retried_after_retry_after(openai_server, herds):
    openai_server.recorder.clear()
    response = make(openai_server, herds, model="flaky-429").chat_sync("m", "x")
    assert response.content == "echo: x" and response.attempts == 2
    assert openai_server.recorder.counts["/v1/chat/completions:flaky-429"] == 2


def test_500_is_retried_then_reported(openai_server, herds):
    openai_server.recorder.clear()
    with pytest.raises(ProviderError) as info:
        make(openai_server, herds, model="err-500").chat_sync("m", "x")
    assert "HTTP 500" in str(info.value) and "failed on its side" in str(info.value)
    assert openai_server.recorder.counts["/v1/chat/completions:err-500"] == 3  # 1 + 2 retries


def test_400_is_a_bad_request_and_not_retried(openai_server, herds):
    openai_server.recorder.clear()
    with pytest.raises(BadRequestError, match=r"must be <= 2.*fix the options"):
        make(openai_server, herds, model="err-400").chat_sync("m", "x")
    assert openai_server.recorder.counts["/v1/chat/completions:err-400"] == 1


def test_timeout(openai_server, herds):
    herd = make(openai_server, herds, model="slow")
    started = time.perf_counter()
    with pytest.raises(
        CallTimeoutError, match=r"gave no answer within 0.3s — pass a larger timeout="
    ):
        herd.chat_sync("m", "x", timeout=0.3)
    assert time.perf_counter() - started < 2.5  # 3 tries of 0.3 s, never the server's 3 s


def test_connection_refused(herds):
    table = {"provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    herd = provider_herd(openai_provider, {"m": table}, ENV, retries=0)
    herds.append(herd)
    with pytest.raises(
        ConnectionRefusedByServerError,
        match=r"nothing is listening at OpenAI at http://127.0.0.1:\d+/v1 "
        r"\(connection refused\) — start the server, or fix base_url in \[models.m\]",
    ):
        herd.chat_sync("m", "x")


@pytest.mark.parametrize("model", ["malformed", "html", "nofields"])
def test_malformed_bodies_are_bad_responses(openai_server, herds, model):
    with pytest.raises(
        BadResponseError, match=r"OpenAI at .* answered 'm' with .* — check base_url"
    ):
        make(openai_server, herds, model=model).chat_sync("m", "x")


def test_stream_without_finish_reason_is_a_bad_response(openai_server, herds):
    with pytest.raises(BadResponseError, match="ended without a finish reason"):
        stream_all(make(openai_server, herds, model="truncated"))


def test_a_stream_event_that_is_not_an_object_is_a_bad_response(openai_server, herds):
    # chunks are read as the JSON the server sent: anything but an object is refused
    with pytest.raises(
        BadResponseError,
        match=r"OpenAI at .* answered 'm' with a stream event that is not a JSON object — "
        r"check base_url",
    ):
        stream_all(make(openai_server, herds, model="stream-not-object"))


def test_error_event_inside_a_stream(openai_server, herds):
    with pytest.raises(ProviderError, match="failed mid-answer"):
        stream_all(make(openai_server, herds, model="midstream-error"))


def test_unknown_option_is_one_line_listing_allowed(openai_server, herds):
    with pytest.raises(
        BadRequestError, match="option 'num_ctx' is not valid for the openai provider — allowed: "
    ):
        make(openai_server, herds).chat_sync("m", "x", num_ctx=4096)


def test_unknown_setting_in_plugins_toml(openai_server, herds):
    with pytest.raises(
        ConfigError, match=r"\[models.m\] base_ur: unknown key — did you mean 'base_url'\?"
    ):
        make(openai_server, herds, base_ur="x").chat_sync("m", "x")


def test_preset_uses_max_tokens_and_legacy_key_with_one_hint(openai_server, herds, caplog):
    keys._HINTED.discard("DEEPSEEK_KEY")
    herd = make(openai_server, herds, provider="deepseek", env={"DEEPSEEK_KEY": API_KEY})
    with caplog.at_level(logging.WARNING, logger="modelherd.keys"):
        assert herd.chat_sync("m", "hi", max_tokens=9).content == "echo: hi"
        herd.chat_sync("m", "again")
    hints = [r.getMessage() for r in caplog.records if r.name == "modelherd.keys"]
    assert hints == [
        "DEEPSEEK_KEY is an old name; rename it to DEEPSEEK_API_KEY (both work for now)"
    ]
    assert API_KEY not in caplog.text
    body = openai_server.recorder.last("/v1/chat/completions")["body"]
    assert "max_completion_tokens" not in body


def test_compatible_server_without_key(openai_server, herds):
    herd = make(openai_server, herds, provider="openai_compatible", env={})
    with pytest.raises(AuthenticationError, match="refused the API key in the API key variable"):
        herd.chat_sync("m", "x")  # our fake wants a key; a server that does not works keyless
    herd = make(
        openai_server,
        herds,
        provider="openai_compatible",
        env={"MY_KEY": API_KEY},
        api_key_env="MY_KEY",
    )
    assert herd.chat_sync("m", "x").content == "echo: x"


def test_availability_without_network():
    spec = ModelSpec(alias="gpt", provider="openai", model="gpt-5.4")
    assert OpenAIModel.availability(spec, {}).model_dump() == {
        "ok": False,
        "reason": "OPENAI_API_KEY is not set",
        "fix": "set OPENAI_API_KEY in the environment or .env",
    }
    assert OpenAIModel.availability(spec, {"OPENAI_KEY": "k"}).ok
    local = ModelSpec(alias="vllm", provider="openai_compatible", model="x")
    assert OpenAICompatibleModel.availability(local, {}).fix == (
        'set base_url = "http://host:port/v1" in [models.vllm]'
    )
    with_url = local.model_copy(update={"settings": {"base_url": "http://127.0.0.1:1/v1"}})
    assert OpenAICompatibleModel.availability(with_url, {}).ok
    named = with_url.model_copy(
        update={"settings": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "VLLM_KEY"}}
    )
    assert OpenAICompatibleModel.availability(named, {}).reason == "VLLM_KEY is not set"


def test_missing_key_at_call_time_names_the_variable(openai_server, herds):
    with pytest.raises(ConfigError, match=r"'m' \(openai\) needs an API key — set OPENAI_API_KEY"):
        make(openai_server, herds, env={}).chat_sync("m", "x")


def test_repr_and_errors_never_hold_the_key(openai_server, herds):
    herd = make(openai_server, herds)
    model = herd.get_model("m")
    assert API_KEY not in repr(model) and API_KEY not in str(vars(model).get("settings"))


def test_one_herds_shutdown_never_closes_another_herds_clients(openai_server):
    table = {"provider": "openai", "model": "echo-model", "base_url": f"{openai_server.url}/v1"}
    first = provider_herd(openai_provider, {"m": table}, ENV)
    second = provider_herd(openai_provider, {"m": table}, ENV)

    async def go() -> str:
        await first.chat("m", "x")
        await second.chat("m", "y")
        assert first.get_model("m").client() is not second.get_model("m").client()
        await first.aclose()  # closes only the clients the first Herd opened
        answer = (await second.chat("m", "still here")).content
        await second.aclose()
        return answer

    import asyncio

    assert "still here" in asyncio.run(go())


def test_one_client_per_endpoint_and_key_closed_at_shutdown(openai_server):
    table = {"provider": "openai", "model": "echo-model", "base_url": f"{openai_server.url}/v1"}
    herd = provider_herd(openai_provider, {"a": table, "b": dict(table)}, ENV)

    async def go() -> tuple[int, int]:
        await herd.chat("a", "x")
        await herd.chat("b", "y")
        first = herd.get_model("a").client()
        assert first is herd.get_model("b").client()
        before = len(herd.stash[openai_provider._POOL])
        await herd.aclose()
        return before, len(herd.stash[openai_provider._POOL])

    import asyncio

    before, after = asyncio.run(go())
    assert before >= 1 and after == 0


def test_health_checks_the_model_is_listed(openai_server, herds):
    import asyncio

    herd = make(openai_server, herds, model="gpt-5.4")
    health = asyncio.run(_closing(herd, herd.get_model("m").health()))
    assert health.ok and "models listed" in health.detail
    herd = make(openai_server, herds, model="gpt-9")
    health = asyncio.run(_closing(herd, herd.get_model("m").health()))
    assert not health.ok and "no model 'gpt-9'" in health.detail and "gpt-5.4" in health.detail
    herd = make(openai_server, herds, env={"OPENAI_API_KEY": "sk-bad-000000"})
    health = asyncio.run(_closing(herd, herd.get_model("m").health()))
    assert not health.ok and "OPENAI_API_KEY" in health.detail + health.fix


@pytest.mark.parametrize(
    ("alias", "provider", "key_var"),
    [("gpt", "openai", "OPENAI_API_KEY"), ("deepseek", "deepseek", "DEEPSEEK_KEY")],
)
def test_herd_chat_cli(openai_server, tmp_path, monkeypatch, alias, provider, key_var):
    """`herd chat -m gpt|deepseek` end to end, the key read from a trusted .env."""
    from click.testing import CliRunner
    from modelherd.cli import make_cli

    config = tmp_path / "plugins.toml"
    config.write_text(
        f'[models.{alias}]\nprovider = "{provider}"\nmodel = "echo-model"\n'
        f'base_url = "{openai_server.url}/v1"\n'
    )
    (tmp_path / ".env").write_text(f"{key_var}={API_KEY}\n")
    monkeypatch.chdir(tmp_path)
    for var in ("OPENAI_API_KEY", "OPENAI_KEY", "DEEPSEEK_API_KEY", "DEEPSEEK_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert CliRunner().invoke(make_cli(), ["trust", ".env"]).exit_code == 0
    result = CliRunner().invoke(make_cli(), ["--config", str(config), "chat", "-m", alias, "hi"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("echo: hi") and API_KEY not in result.output


def test_health_with_gemini_ids_and_servers_without_a_model_list(openai_server, herds):
    import asyncio

    for prefix, detail in (("/gemini", "(5 models listed)"), ("/bare", "(it lists no models)")):
        table = {
            "provider": "gemini",
            "model": "gpt-5.4",
            "base_url": f"{openai_server.url}{prefix}/v1",
        }
        herd = provider_herd(openai_provider, {"m": table}, {"GEMINI_API_KEY": API_KEY})
        herds.append(herd)
        health = asyncio.run(_closing(herd, herd.get_model("m").health()))
        assert health.ok and health.detail.endswith(detail), health
        assert herd.chat_sync("m", "x").content == "echo: x"


def test_unloading_one_alias_keeps_the_shared_client_for_the_other(openai_server):
    import asyncio

    table = {"provider": "openai", "model": "echo-model", "base_url": f"{openai_server.url}/v1"}
    herd = provider_herd(openai_provider, {"a": table, "b": dict(table)}, ENV)

    async def go() -> tuple[bool, str, int]:
        await herd.chat("a", "x")
        await herd.chat("b", "y")
        shared = herd.get_model("b").client()
        await herd.unload_model("a")  # residency eviction of one alias
        still_open = herd.get_model("b").client() is shared
        answer = (await herd.chat("b", "z")).content
        await herd.unload_model("b")
        left = len(herd.stash[openai_provider._POOL])
        await herd.aclose()
        return still_open, answer, left

    still_open, answer, left = asyncio.run(go())
    assert still_open and answer == "echo: z" and left == 0
