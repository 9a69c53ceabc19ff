"""The official ollama and anthropic SDKs against `herd serve`, streaming included."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import ollama
import pytest
from modelherd import ChatResponse, ProviderError
from modelherd.testing import MockModel

from .gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(60)


def ollama_client(server: GatewayServer, key: str) -> ollama.Client:
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def anthropic_client(server: GatewayServer, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=10)


def last_request(server: GatewayServer, alias: str = "mock") -> object:
    model = server.herd.get_model(alias)
    assert isinstance(model, MockModel)
    return model.history[-1]


def test_ollama_chat_json_and_stream(gateway: GatewayServer) -> None:
    c = ollama_client(gateway, gateway.key("bob"))
    answer = c.chat(
        model="mock",
        messages=[{"role": "user", "content": "hi"}],
        options={"temperature": 0.1, "num_predict": 12},
    )
    assert answer.message.content == "hello there friend"
    assert answer.done and answer.done_reason == "stop" and answer.eval_count == 3
    seen = last_request(gateway)
    assert seen.tenant == "bob"  # type: ignore[attr-defined]
    assert seen.options == {"temperature": 0.1, "max_tokens": 12}  # type: ignore[attr-defined]
    parts = list(c.chat(model="mock", messages=[{"role": "user", "content": "again"}], stream=True))
    assert "".join(p.message.content or "" for p in parts) == "hello there friend"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]


def test_ollama_format_becomes_response_format(gateway: GatewayServer) -> None:
    c = ollama_client(gateway, gateway.key())
    c.chat(model="mock", messages=[{"role": "user", "content": "x"}], format="json")
    assert last_request(gateway).options["response_format"] == {"type": "json_object"}  # type: ignore[attr-defined]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    c.chat(model="mock", messages=[{"role": "user", "content": "y"}], format=schema)
    fmt = last_request(gateway).options["response_format"]  # type: ignore[attr-defined]
    assert fmt["json_schema"]["schema"] == schema


def test_ollama_tags_and_errors(gateway: GatewayServer) -> None:
    names = [m.model for m in ollama_client(gateway, gateway.key(models=["mock"])).list().models]
    assert names == ["mock"]
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client(gateway, "hk_000000000000_" + "x" * 43).list()
    assert info.value.status_code == 401
    assert "invalid API key" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client(gateway, gateway.key(models=["mock"])).chat(
            model="other", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 403
    assert "may not use model 'other'" in info.value.error


def test_ollama_error_mid_stream_is_an_error_line(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    class Breaks(MockModel):
        async def stream(self, request):  # type: ignore[no-untyped-def]
            yield "partial "
            raise ProviderError("the upstream dropped the stream — retry")
            yield ChatResponse(content="", model="m", provider="mock")  # pragma: no cover

    server = make_gateway({"mock": Breaks()})
    got: list[str] = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in ollama_client(server, server.key()).chat(
            model="mock", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            got.append(part.message.content or "")
    assert got == ["partial "]
    assert "dropped the stream" in info.value.error


def test_anthropic_messages_json_and_stream(gateway: GatewayServer) -> None:
    c = anthropic_client(gateway, gateway.key("carol"))
    message = c.messages.create(
        model="mock",
        max_tokens=50,
        system="be brief",
        messages=[{"role": "user", "content": "hi"}],
        stop_sequences=["END"],
    )
    assert message.content[0].text == "hello there friend"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 3
    seen = last_request(gateway)
    assert seen.tenant == "carol"  # type: ignore[attr-defined]
    assert [m.role for m in seen.messages] == ["system", "user"]  # type: ignore[attr-defined]
    assert seen.options == {"max_tokens": 50, "stop": ["END"]}  # type: ignore[attr-defined]
    with c.messages.stream(
        model="mock", max_tokens=50, messages=[{"role": "user", "content": "more"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "hello there friend"
    assert final.usage.output_tokens == 3 and final.stop_reason == "end_turn"


def test_anthropic_errors_in_anthropic_shape(gateway: GatewayServer) -> None:
    with pytest.raises(anthropic.AuthenticationError) as auth:
        anthropic_client(gateway, "nope").messages.create(
            model="mock", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        anthropic_client(gateway, gateway.key()).messages.create(
            model="mock",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"max_tokens": "many"},
        )
    assert "max_tokens" in bad.value.message
