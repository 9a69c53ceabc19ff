"""Tool definitions (function, pydantic model, JSON schema), argument checks, tool_choice,
and the stream assembler, without any provider."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from modelherd.errors import ConfigError
from modelherd.tool_stream import IncompleteToolCallError, ToolCallAssembler
from modelherd.tools import (
    Tool,
    ToolArgumentsError,
    as_tool_choice,
    as_tools,
    check_calls,
    parse_call,
)
from modelherd.types import ToolCall, ToolCallDelta, ToolCallEnd, ToolCallStart
from pydantic import BaseModel, Field


def get_weather(city: str, unit: Literal["C", "F"] = "C", days: int = 1) -> dict[str, object]:
    """Get the weather forecast for a city.

    Longer notes that are not part of the summary.

    Args:
        city: the city name, e.g. "Paris"
        unit: temperature unit
        days: how many days ahead,
            counted from today
    """
    return {"city": city, "unit": unit, "days": days}


class Order(BaseModel):
    """Place an order."""

    symbol: str
    quantity: Annotated[int, Field(gt=0)]


def test_a_function_becomes_a_schema_from_its_annotations_and_docstring() -> None:
    tool = Tool.from_function(get_weather)
    assert tool.name == "get_weather"
    assert tool.description == "Get the weather forecast for a city."
    props = tool.parameters["properties"]
    assert props["city"] == {
        "type": "string",
        "title": "City",
        "description": 'the city name, e.g. "Paris"',
    }
    assert props["unit"]["enum"] == ["C", "F"] and props["unit"]["default"] == "C"
    assert props["days"]["description"] == "how many days ahead, counted from today"
    assert tool.parameters["required"] == ["city"]
    assert tool.parameters["additionalProperties"] is False
    assert "title" not in tool.parameters
    assert tool.function is get_weather


def test_a_pydantic_model_is_a_tool() -> None:
    tool = Tool.from_model(Order)
    assert (tool.name, tool.description) == ("Order", "Place an order.")
    assert tool.parameters["properties"]["quantity"]["exclusiveMinimum"] == 0
    call = parse_call("c1", "Order", '{"symbol": "BTC", "quantity": 2}', [tool])
    assert call.ok
    assert tool.arguments_for(call) == Order(symbol="BTC", quantity=2)


def test_invalid_arguments_are_a_value_to_feed_back_not_a_crash() -> None:
    tools = as_tools([get_weather, Order])
    bad_type = parse_call("c1", "get_weather", '{"city": 3, "unit": "K"}', tools)
    assert bad_type.error is not None
    assert "city: Input should be a valid string" in bad_type.error
    assert "unit: Input should be 'C' or 'F'" in bad_type.error
    missing = parse_call("c2", "get_weather", "{}", tools)
    assert missing.error == "city: Field required"
    extra = parse_call("c3", "get_weather", '{"city": "x", "colour": 1}', tools)
    assert extra.error == "colour: Extra inputs are not permitted"
    broken = parse_call("c4", "get_weather", '{"city": "Par', tools)
    assert broken.error is not None and broken.error.startswith("the arguments are not valid JSON")
    assert broken.raw_arguments == '{"city": "Par'
    not_object = parse_call("c5", "get_weather", "[1]", tools)
    assert not_object.error == "the arguments must be a JSON object, not list"
    unknown = parse_call("c6", "get_time", "{}", tools)
    assert unknown.error == "there is no tool named 'get_time' (tools: get_weather, Order)"
    negative = parse_call("c7", "Order", '{"symbol": "BTC", "quantity": 0}', tools)
    assert negative.error == "quantity: Input should be greater than 0"
    with pytest.raises(ToolArgumentsError) as info:
        tools[1].arguments_for(negative)
    assert "the model called 'Order' with invalid arguments: quantity" in str(info.value)
    assert "Message.tool_error(call)" in str(info.value)


def test_a_json_schema_tool_is_checked_by_jsonschema() -> None:
    (tool,) = as_tools(
        [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look a word up.",
                    "parameters": {
                        "type": "object",
                        "properties": {"word": {"type": "string", "minLength": 2}},
                        "required": ["word"],
                    },
                },
            }
        ]
    )
    assert tool.description == "Look a word up." and tool.function is None
    assert parse_call("c", "lookup", '{"word": "ab"}', [tool]).ok
    assert parse_call("c", "lookup", '{"word": "a"}', [tool]).error == ("word: 'a' is too short")
    assert parse_call("c", "lookup", "{}", [tool]).error == (
        "(arguments): 'word' is a required property"
    )


def test_anthropic_and_bare_dict_forms() -> None:
    a, b = as_tools(
        [
            {"name": "a", "input_schema": {"type": "object", "properties": {}}},
            {"name": "b", "parameters": {"type": "object"}},
        ]
    )
    assert (a.name, b.name) == ("a", "b")
    tools = as_tools([get_weather])
    assert as_tools(tools) == tools  # idempotent
    assert as_tools([get_weather])[0] is tools[0]  # built once per function


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (
            [get_weather, get_weather],
            "two tools are named 'get_weather' — tool names must be unique",
        ),
        ([{"parameters": {}}], "a tool given as a dict needs a 'name'"),
        ([{"name": "has space"}], "tool name 'has space' is not valid — use 1-64 letters"),
        (
            [{"name": "x", "parameters": {"type": "array"}}],
            "parameters must be a JSON schema of type 'object'",
        ),
        ([42], "tools= takes functions, pydantic models, Tool objects or dicts — got int"),
    ],
)
def test_bad_tool_definitions_say_what_to_fix(tools: list[object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        as_tools(tools)
    assert message in str(info.value)


def test_variadic_and_unresolvable_functions_are_refused() -> None:
    def spread(*items: str) -> None:
        """Take anything."""

    with pytest.raises(ConfigError, match=r"\*items cannot be described to a model"):
        Tool.from_function(spread)

    def ghost(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        """Unresolvable."""

    with pytest.raises(ConfigError, match="cannot read its type annotations"):
        Tool.from_function(ghost)


def test_tool_choice_words_names_and_vendor_forms() -> None:
    tools = as_tools([get_weather, Order])
    assert as_tool_choice("auto", tools) == "auto"
    assert as_tool_choice("any", tools) == "required"
    assert as_tool_choice("none", ()) == "none"
    assert as_tool_choice("Order", tools) == "Order"
    assert as_tool_choice(get_weather, tools) == "get_weather"
    assert as_tool_choice({"type": "function", "function": {"name": "Order"}}, tools) == "Order"
    assert as_tool_choice({"type": "tool", "name": "Order"}, tools) == "Order"
    assert as_tool_choice({"type": "required"}, tools) == "required"
    assert as_tool_choice(None, tools) is None
    with pytest.raises(
        ConfigError,
        match=r"tool_choice='sell' is not valid — use 'auto', 'none', 'required' or the name of a tool \(get_weather, Order\)",
    ):
        as_tool_choice("sell", tools)
    with pytest.raises(ConfigError, match="tool_choice='required' needs tools="):
        as_tool_choice("required", ())


@pytest.mark.anyio
async def test_invoke_runs_sync_and_async_functions_with_checked_arguments() -> None:
    async def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    sync_tool, async_tool = as_tools([get_weather, add])
    call = parse_call("c", "get_weather", '{"city": "Oslo", "days": 2}', [sync_tool])
    assert await sync_tool.invoke(call) == {"city": "Oslo", "unit": "C", "days": 2}
    assert await async_tool.invoke(parse_call("d", "add", '{"a": 2, "b": 3}', [async_tool])) == 5
    with pytest.raises(ToolArgumentsError):
        await async_tool.invoke(parse_call("e", "add", '{"a": "x", "b": 3}', [async_tool]))
    (schema_only,) = as_tools([{"name": "s", "parameters": {"type": "object"}}])
    with pytest.raises(ConfigError, match="tool 's' has no function to run"):
        await schema_only.invoke(parse_call("f", "s", "{}", [schema_only]))


def test_check_calls_fills_errors_and_keeps_existing_ones() -> None:
    tools = as_tools([get_weather])
    calls = [
        ToolCall(id="1", name="get_weather", arguments={"city": "x"}),
        ToolCall(id="2", name="get_weather", arguments={}),
        ToolCall(id="3", name="get_weather", arguments={}, error="earlier"),
    ]
    checked = check_calls(calls, tools)
    assert [c.error for c in checked] == [None, "city: Field required", "earlier"]


def test_the_assembler_puts_fragments_back_together_per_index() -> None:
    asm = ToolCallAssembler()
    events = []
    events += asm.feed(0, "call_a", "get_weather", '{"ci')
    events += asm.feed(1, "call_b", "Order", "")
    events += asm.feed(0, None, None, 'ty": "Pa')
    events += asm.feed(1, None, None, '{"symbol": "ETH", "quantity": 1}')
    events += asm.feed(0, None, None, 'ris"}')
    events += asm.end_all()
    assert events[0] == ToolCallStart(0, "call_a", "get_weather")
    assert events[1] == ToolCallDelta(0, '{"ci')
    assert events[2] == ToolCallStart(1, "call_b", "Order")
    ends = [e for e in events if isinstance(e, ToolCallEnd)]
    assert [e.call.arguments for e in ends] == [{"city": "Paris"}, {"symbol": "ETH", "quantity": 1}]
    assert [c.id for c in asm.calls()] == ["call_a", "call_b"]
    assert asm.end(0) is None  # already ended


def test_a_cut_call_is_an_error_holding_the_partial_call() -> None:
    asm = ToolCallAssembler()
    asm.feed(0, "call_a", "get_weather", '{"city": "Pa')
    error = asm.incomplete("OpenAI", "gpt")
    assert isinstance(error, IncompleteToolCallError)
    assert error.retryable
    assert error.calls[0].raw_arguments == '{"city": "Pa'
    assert error.calls[0].error is not None
    assert str(error) == (
        "OpenAI stream for 'gpt' ended in the middle of the tool call 'get_weather' "
        '(arguments so far: \'{"city": "Pa\') — the partial answer was not returned; '
        "the call can be retried"
    )


def test_parallel_calls_sent_under_one_index_stay_apart() -> None:
    asm = ToolCallAssembler()
    asm.feed(0, "call_a", "get_weather", '{"city": "Oslo"}')
    asm.feed(0, "call_b", "get_weather", '{"city": ')
    asm.feed(0, None, None, '"Rome"}')
    asm.end_all()
    assert [(c.id, c.arguments) for c in asm.calls()] == [
        ("call_a", {"city": "Oslo"}),
        ("call_b", {"city": "Rome"}),
    ]
