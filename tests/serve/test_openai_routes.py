"""The official openai SDK against `herd serve`: chat (JSON, SSE, usage), models, embeddings."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest
from modelherd import ChatResponse, ProviderError
from modelherd.testing import MockModel

from .gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(60)


def client(server: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_chat_json_goes_through_the_herd_with_the_keys_tenant(gateway: GatewayServer) -> None:
    key = gateway.key("alice")
    completion = client(gateway, key).chat.completions.create(
        model="mock",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.2,
        max_completion_tokens=20,
        user="mallory",  # a body field never decides the tenant
    )
    assert completion.choices[0].message.content == "hello there friend"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "mock"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    model = gateway.herd.get_model("mock")
    assert isinstance(model, MockModel)
    seen = model.history[-1]
    assert seen.tenant == "alice"
    assert [m.role for m in seen.messages] == ["system", "user"]
    assert seen.options["temperature"] == 0.2
    assert seen.options["max_tokens"] == 20


def test_stream_sends_chunks_a_finish_reason_usage_and_done(gateway: GatewayServer) -> None:
    key = gateway.key()
    stream = client(gateway, key).chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there friend"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    # the raw wire ends with [DONE] (the SDK hides it)
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": True},
        timeout=10,
    ) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])


def test_response_format_and_tools_reach_the_model(gateway: GatewayServer) -> None:
    key = gateway.key()
    schema = {"type": "object", "properties": {"action": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "quote", "parameters": {"type": "object"}}}]
    client(gateway, key).chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": "decide"}],
        response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": schema}},
        tools=tools,  # type: ignore[arg-type]
    )
    model = gateway.herd.get_model("mock")
    assert isinstance(model, MockModel)
    options = model.history[-1].options
    assert options["response_format"]["json_schema"]["schema"] == schema
    # the pipeline turns wire dicts into typed Tools
    (tool,) = options["tools"]
    assert (tool.name, tool.parameters) == ("quote", {"type": "object"})


def test_unsupported_parameters_are_a_400_not_ignored(gateway: GatewayServer) -> None:
    c = client(gateway, gateway.key())
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}], n=3)
    assert "n > 1 is not supported" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model="mock",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"frobnicate": True},
        )
    assert "unsupported parameter(s): frobnicate" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="mock", messages=[])
    assert '"messages" must be a non-empty list' in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model="mock",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/x"}}]}
            ],
        )
    assert "image_url.url must be an http(s) URL or a data:image/" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model="mock",
            messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],  # type: ignore[list-item]
        )
    assert "content part of type 'file' is not supported" in info.value.message


def test_unknown_model_is_404_model_not_found(gateway: GatewayServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway, gateway.key()).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"
    assert "GET /v1/models lists the ones this key may use" in info.value.message


def test_models_lists_the_aliases_the_key_may_use(gateway: GatewayServer) -> None:
    every = [m.id for m in client(gateway, gateway.key()).models.list()]
    assert every == ["mock", "other"]
    only = [m.id for m in client(gateway, gateway.key(models=["other"])).models.list()]
    assert only == ["other"]


def test_an_error_before_the_first_chunk_is_an_http_status(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    broken = MockModel().enqueue(*[ProviderError("upstream 500 — try later")] * 3)
    server = make_gateway({"mock": broken})
    with pytest.raises(openai.APIStatusError) as info:
        list(
            client(server, server.key()).chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert info.value.status_code == 502
    assert "upstream 500" in info.value.message


def test_an_error_mid_stream_is_an_error_event_never_a_complete_answer(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    class Breaks(MockModel):
        async def stream(self, request):  # type: ignore[no-untyped-def]
            yield "partial "
            raise ProviderError("the upstream dropped the stream — retry")
            yield ChatResponse(content="", model="m", provider="mock")  # pragma: no cover

    server = make_gateway({"mock": Breaks()})
    stream = client(server, server.key()).chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "x"}], stream=True
    )
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "partial "
    assert "dropped the stream" in str(info.value)


PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_images_tool_calls_and_tool_answers_become_herd_messages(gateway: GatewayServer) -> None:
    from modelherd.types import ImagePart

    client(gateway, gateway.key()).chat.completions.create(
        model="mock",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"zoom": 2}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a red dot"},
        ],
    )
    model = gateway.herd.get_model("mock")
    assert isinstance(model, MockModel)
    user, assistant, tool = model.history[-1].messages
    assert user.text == "what is this?" and isinstance(user.images[0], ImagePart)
    assert user.images[0].media_type == "image/png"
    assert assistant.tool_calls[0].name == "look"
    assert assistant.tool_calls[0].arguments == {"zoom": 2}
    assert tool.role == "tool" and tool.tool_call_id == "call_1" and tool.text == "a red dot"


def _calls_answer() -> ChatResponse:
    from modelherd.types import ToolCall

    return ChatResponse(
        content="",
        model="mock-1",
        provider="mock",
        finish_reason="tool_calls",
        tool_calls=[
            ToolCall(
                id="call_a",
                name="quote",
                arguments={"symbol": "BTC"},
                raw_arguments='{"symbol": "BTC"}',
            ),
            ToolCall(
                id="call_b",
                name="quote",
                arguments={"symbol": "ETH"},
                raw_arguments='{"symbol": "ETH"}',
            ),
        ],
    )


def test_tool_calls_come_back_in_json_and_as_stream_deltas(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    model = MockModel().enqueue(_calls_answer(), _calls_answer())
    server = make_gateway({"mock": model})
    c = client(server, server.key())
    answer = c.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(t.id, t.function.name, json.loads(t.function.arguments)) for t in calls] == [  # type: ignore[union-attr]
        ("call_a", "quote", {"symbol": "BTC"}),
        ("call_b", "quote", {"symbol": "ETH"}),
    ]
    chunks = list(
        c.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "y"}], stream=True
        )
    )
    # as OpenAI streams them: the first delta of a call has its id and name, the
    # arguments may come in fragments under the same index
    rebuilt: dict[int, dict[str, str]] = {}
    for ch in chunks:
        for d in (ch.choices[0].delta.tool_calls if ch.choices else None) or []:
            call = rebuilt.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or (d.id or "")
            if d.function is not None:
                call["name"] = call["name"] or (d.function.name or "")
                call["arguments"] += d.function.arguments or ""
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in rebuilt.values()] == [
        ("call_a", "quote", {"symbol": "BTC"}),
        ("call_b", "quote", {"symbol": "ETH"}),
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
