"""Tool calls, tool answers and images through the official SDKs, against loopback
servers speaking each vendor's wire format (OpenAI `tool_calls`, Anthropic
`tool_use` / `tool_result`, Ollama `message.tool_calls`), streaming included:
arguments split across many deltas, two parallel calls, a call cut mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import pytest
from modelherd import (
    BadRequestError,
    ChatResponse,
    ConfigError,
    Herd,
    ImagePart,
    IncompleteToolCallError,
    Message,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from modelherd.plugins.providers import anthropic as anthropic_provider
from modelherd.plugins.providers import ollama as ollama_provider
from modelherd.plugins.providers import openai as openai_provider

from . import fake_anthropic, fake_openai
from .conftest import provider_herd
from .loopback import LoopbackServer

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """Get the current weather for a city.

    Args:
        city: the city name
        unit: temperature unit
    """
    return f"{city}: 21 {unit}"


def get_time(zone: str) -> str:
    """Get the time in a time zone."""
    return f"{zone}: 12:00"


TOOLS = [get_weather, get_time]


class Vendor:
    """One vendor: its plugin, server fixture, model names and the path it posts to."""

    def __init__(
        self,
        name: str,
        plugin: Any,
        fixture: str,
        table: Callable[[LoopbackServer], dict[str, Any]],
        env: dict[str, str],
        path: str,
        suffix: str = "",
    ) -> None:
        self.name, self.plugin, self.fixture, self.table = name, plugin, fixture, table
        self.env, self.path, self.suffix = env, path, suffix

    def __repr__(self) -> str:
        return self.name


VENDORS = [
    Vendor(
        "openai",
        openai_provider,
        "openai_server",
        lambda s: {"provider": "openai", "base_url": f"{s.url}/v1"},
        {"OPENAI_API_KEY": fake_openai.API_KEY},
        "/v1/chat/completions",
    ),
    Vendor(
        "anthropic",
        anthropic_provider,
        "anthropic_server",
        lambda s: {"provider": "anthropic", "base_url": s.url},
        {"ANTHROPIC_API_KEY": fake_anthropic.API_KEY},
        "/v1/messages",
    ),
    Vendor(
        "ollama",
        ollama_provider,
        "ollama_server",
        lambda s: {"provider": "ollama", "host": s.url},
        {},
        "/api/chat",
        ":latest",
    ),
]


@pytest.fixture(params=VENDORS, ids=repr)
def vendor(request: pytest.FixtureRequest) -> tuple[Vendor, LoopbackServer]:
    v: Vendor = request.param
    return v, request.getfixturevalue(v.fixture)


def make(vendor: tuple[Vendor, LoopbackServer], herds: list[Herd], model: str) -> Herd:
    v, server = vendor
    table = {**v.table(server), "model": model + v.suffix}
    # a generous timeout: the first call imports the SDK, slow on a loaded machine
    herd = provider_herd(v.plugin, {"m": table}, v.env, retries=0, timeout=30.0)
    herds.append(herd)
    return herd


def collect(herd: Herd, messages: Any, **kwargs: Any) -> tuple[list[Any], ChatResponse]:
    async def go() -> tuple[list[Any], ChatResponse]:
        events: list[Any] = []
        final: ChatResponse | None = None
        async for item in herd.stream("m", messages, events=True, **kwargs):
            if isinstance(item, ChatResponse):
                final = item
            else:
                events.append(item)
        assert final is not None
        return events, final

    return asyncio.run(go())


def test_one_call_comes_back_parsed_and_checked(vendor, herds):
    herd = make(vendor, herds, "tools-1")
    response = herd.chat_sync("m", "weather in Oslo?", tools=TOOLS)
    assert response.finish_reason == "tool_calls"
    (call,) = response.tool_calls
    assert call.name == "get_weather" and call.ok
    assert call.arguments["city"] == "text" and call.id
    sent = vendor[1].recorder.last(vendor[0].path)["body"]
    names = [t.get("name") or t["function"]["name"] for t in sent["tools"]]
    assert names == ["get_weather", "get_time"]


def test_two_parallel_calls_then_the_results_go_back(vendor, herds):
    herd = make(vendor, herds, "tools-2")
    first = herd.chat_sync("m", "weather and time?", tools=TOOLS)
    assert [c.name for c in first.tool_calls] == ["get_weather", "get_time"]
    assert len({c.id for c in first.tool_calls}) == 2
    conversation = [
        Message(role="user", content="weather and time?"),
        Message(role="assistant", content=first.content, tool_calls=first.tool_calls),
        *[Message.tool_result(c, f"result {i}") for i, c in enumerate(first.tool_calls)],
    ]
    second = herd.chat_sync("m", conversation, tools=TOOLS)
    assert second.content == "results: result 0; result 1"
    assert second.finish_reason == "stop" and not second.tool_calls


def test_tool_choice_reaches_the_wire(vendor, herds):
    v, server = vendor
    herd = make(vendor, herds, "echo-model" if v.name != "ollama" else "llama3.2")
    if v.name == "ollama":
        with pytest.raises(
            BadRequestError,
            match="Ollama has no tool_choice, so tool_choice='get_time' cannot be honoured",
        ):
            herd.chat_sync("m", "time?", tools=TOOLS, tool_choice="get_time")
        herd.chat_sync("m", "time?", tools=TOOLS, tool_choice="none")
        assert not server.recorder.last(v.path)["body"].get("tools")  # the client sends []
        return
    response = herd.chat_sync("m", "time?", tools=TOOLS, tool_choice="get_time")
    assert [c.name for c in response.tool_calls] == ["get_time"]
    sent = server.recorder.last(v.path)["body"]["tool_choice"]
    expected = (
        {"type": "function", "function": {"name": "get_time"}}
        if v.name == "openai"
        else {"type": "tool", "name": "get_time"}
    )
    assert sent == expected
    herd.chat_sync("m", "time?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    sent = server.recorder.last(v.path)["body"]
    if v.name == "openai":
        assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    else:
        assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_a_bad_tool_choice_is_one_line(vendor, herds):
    herd = make(vendor, herds, "tools-1")
    with pytest.raises(
        ConfigError,
        match=r"tool_choice='sell' is not valid — use 'auto', 'none', 'required' or the name of a tool \(get_weather, get_time\)",
    ):
        herd.chat_sync("m", "x", tools=TOOLS, tool_choice="sell")


def test_images_go_out_in_each_vendors_form(vendor, herds, tmp_path):
    v, server = vendor
    herd = make(vendor, herds, "echo-model" if v.name != "ollama" else "llama3.2")
    path = tmp_path / "chart.png"
    path.write_bytes(PNG)
    message = Message(
        role="user", content=[{"type": "text", "text": "what is this? "}, ImagePart(path=str(path))]
    )
    response = herd.chat_sync("m", [message])
    sent = server.recorder.last(v.path)["body"]["messages"][-1]
    if v.name == "openai":
        assert response.content == "echo: what is this? [image/png]"
        assert sent["content"][1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    elif v.name == "anthropic":
        assert response.content == "echo: what is this? [image/png]"
        assert sent["content"][1]["source"]["type"] == "base64"
        assert sent["content"][1]["source"]["data"].startswith("iVBOR")
    else:
        assert response.content == "echo: what is this?  [1 images]"
        assert sent["images"][0].startswith("iVBOR")


def test_ollama_takes_no_image_urls(ollama_server, herds):
    herd = make((VENDORS[2], ollama_server), herds, "llama3.2")
    image = ImagePart(url="https://example.invalid/chart.png")
    with pytest.raises(BadRequestError, match="takes images as bytes or files, not URLs"):
        herd.chat_sync("m", [Message(role="user", content=[image])])


def test_anthropic_merges_parallel_results_into_one_user_turn(anthropic_server, herds):
    herd = make((VENDORS[1], anthropic_server), herds, "tools-2")
    first = herd.chat_sync("m", "weather and time?", tools=TOOLS)
    conversation = [
        Message(role="user", content="weather and time?"),
        Message(role="assistant", content="Let me check.", tool_calls=first.tool_calls),
        *[Message.tool_result(c, "ok") for c in first.tool_calls],
    ]
    herd.chat_sync("m", conversation, tools=TOOLS)
    sent = anthropic_server.recorder.last("/v1/messages")["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert [b["type"] for b in sent[2]["content"]] == ["tool_result", "tool_result"]
    assert [b["tool_use_id"] for b in sent[2]["content"]] == ["toolu_0", "toolu_1"]


def test_openai_sends_calls_and_answers_in_its_form(openai_server, herds):
    herd = make((VENDORS[0], openai_server), herds, "tools-1")
    first = herd.chat_sync("m", "weather?", tools=TOOLS)
    conversation = [
        Message(role="user", content="weather?"),
        Message(role="assistant", tool_calls=first.tool_calls),
        Message.tool_result(first.tool_calls[0], {"temp": 21}),
    ]
    herd.chat_sync("m", conversation, tools=TOOLS)
    sent = openai_server.recorder.last("/v1/chat/completions")["body"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": first.tool_calls[0].raw_arguments},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'}


def test_arguments_that_break_the_schema_are_an_error_to_feed_back(vendor, herds):
    herd = make(vendor, herds, "tools-bad")
    (call,) = herd.chat_sync("m", "weather?", tools=TOOLS).tool_calls
    assert not call.ok
    assert call.error is not None and "city: Field required" in call.error
    assert "unexpected: Extra inputs are not permitted" in call.error
    assert Message.tool_error(call).content.startswith("error: city: Field required")


def test_streamed_calls_arrive_as_events_and_whole_in_the_response(vendor, herds):
    herd = make(vendor, herds, "tools-2")
    events, final = collect(herd, "weather and time?", tools=TOOLS)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [s.name for s in starts] == ["get_weather", "get_time"]
    assert [s.index for s in starts] == [0, 1]
    for index, call in enumerate(final.tool_calls):
        fragments = [
            e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == index
        ]
        assert "".join(fragments) == call.raw_arguments
        if vendor[0].name != "ollama":  # Ollama sends each call whole
            assert len(fragments) > 3
    ends = [e for e in events if isinstance(e, ToolCallEnd)]
    assert [e.call for e in ends] == final.tool_calls
    assert all(c.ok for c in final.tool_calls) and final.finish_reason == "tool_calls"
    assert all(not isinstance(e, str) for e in events)  # text comes as TextDelta with events=True


def test_plain_stream_yields_only_text(vendor, herds):
    herd = make(vendor, herds, "tools-2")

    async def go() -> list[Any]:
        return [item async for item in herd.stream("m", "weather?", tools=TOOLS)]

    items = asyncio.run(go())
    assert all(isinstance(i, str) for i in items[:-1])
    assert len(items[-1].tool_calls) == 2


def test_a_stream_cut_inside_a_call_is_an_error_with_the_partial_call(vendor, herds):
    herd = make(vendor, herds, "tools-cut")
    with pytest.raises(IncompleteToolCallError) as info:
        collect(herd, "weather?", tools=TOOLS)
    where = (
        "after the tool call" if vendor[0].name == "ollama" else "in the middle of the tool call"
    )
    assert f"ended {where} 'get_weather'" in str(info.value)
    partial = info.value.calls[-1]
    assert partial.name == "get_weather"
    if vendor[0].name != "ollama":
        assert not partial.ok  # half a JSON object: never presented as a call to run


def test_a_full_tool_loop_through_each_vendor(vendor, herds):
    herd = make(vendor, herds, "tools-2")

    async def go() -> Any:
        return await herd.run_tools("m", "weather and time?", tools=TOOLS, max_steps=3)

    run = asyncio.run(go())
    assert run.steps == 2
    assert [r.call.name for r in run.executed] == ["get_weather", "get_time"]
    assert run.content == "results: text: 21 C; text: 12:00"
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "tool", "assistant"]
