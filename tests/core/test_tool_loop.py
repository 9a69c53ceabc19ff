"""The pipeline's side of tools: argument checks, the run_tools loop and its events,
typed stream events, fallbacks without tool support, caching, and typed outputs."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import pytest
from modelherd import (
    ChatResponse,
    ConfigError,
    Message,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    hookimpl,
)
from modelherd.events import ToolExecuted
from modelherd.plugins.cache import memory
from modelherd.structured import OutputValidationError
from modelherd.testing import MockModel, make_herd
from modelherd.tool_loop import ToolExecutionError, ToolLoopError, ToolRetry
from modelherd.tools import ToolsUnsupportedError
from pydantic import BaseModel


def get_price(symbol: str, currency: Literal["USD", "EUR"] = "USD") -> dict[str, Any]:
    """The last traded price of a symbol.

    Args:
        symbol: the ticker
    """
    if symbol == "NOPE":
        raise ToolRetry("unknown symbol 'NOPE'; known: BTC, ETH")
    if symbol == "BOOM":
        raise RuntimeError("price feed down")
    return {"symbol": symbol, "price": {"BTC": 97000.0, "ETH": 3600.0}[symbol]}


def call(call_id: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=call_id, name="get_price", arguments=arguments)


def answer_from_results(request: Any) -> str:
    return "done: " + " | ".join(m.text for m in request.messages if m.role == "tool")


class Events:
    __name__ = "events-recorder"

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl
    def track_event(self, event: Any, herd: Any) -> None:
        self.seen.append(event)


def test_run_tools_runs_parallel_calls_and_returns_the_answer() -> None:
    model = MockModel().enqueue(
        [call("c1", symbol="BTC"), call("c2", symbol="ETH")], answer_from_results
    )
    events = Events()
    herd = make_herd({"desk": model}, plugins=(events,))
    run = asyncio.run(herd.run_tools("desk", "prices?", tools=[get_price]))
    assert run.content == (
        'done: {"symbol": "BTC", "price": 97000.0} | {"symbol": "ETH", "price": 3600.0}'
    )
    assert run.steps == 2 and [r.call.id for r in run.executed] == ["c1", "c2"]
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [m.tool_call_id for m in run.messages[2:4]] == ["c1", "c2"]
    # the second model call saw the tools, the calls and both results
    second = model.history[1]
    assert [t.name for t in second.options["tools"]] == ["get_price"]
    assert second.messages[1].tool_calls[0].id == "c1"
    # one event per call as it ends: parallel calls end in either order (the results
    # above keep the model's order), so the events are compared by call id
    executed = sorted(
        (e for e in events.seen if isinstance(e, ToolExecuted)), key=lambda e: e.call_id
    )
    assert [(e.name, e.call_id, e.error_type) for e in executed] == [
        ("get_price", "c1", None),
        ("get_price", "c2", None),
    ]
    assert json.loads(executed[0].arguments) == {"symbol": "BTC"}
    assert executed[0].description == "The last traded price of a symbol."
    assert executed[0].end_ns >= executed[0].start_ns


def test_invalid_arguments_and_tool_retry_go_back_to_the_model() -> None:
    model = MockModel().enqueue(
        [call("c1", symbol=5), call("c2", symbol="NOPE")],
        [call("c3", symbol="BTC")],
        answer_from_results,
    )
    events = Events()
    herd = make_herd({"desk": model}, plugins=(events,))
    run = asyncio.run(herd.run_tools("desk", "price?", tools=[get_price]))
    bad, retried, good = run.executed
    assert not bad.ok and bad.message.content == (
        "error: symbol: Input should be a valid string — call get_price again with "
        "corrected arguments"
    )
    assert not retried.ok and retried.message.content.startswith("error: unknown symbol 'NOPE'")
    assert good.ok and good.value == {"symbol": "BTC", "price": 97000.0}
    assert [e.error_type for e in events.seen if isinstance(e, ToolExecuted)] == [
        "ToolArgumentsError",
        "ToolRetry",
        None,
    ]
    assert run.steps == 3


def test_a_crashing_tool_stops_the_loop_with_its_error() -> None:
    herd = make_herd({"desk": MockModel().enqueue([call("c1", symbol="BOOM")])})
    with pytest.raises(ToolExecutionError) as info:
        asyncio.run(herd.run_tools("desk", "price?", tools=[get_price]))
    assert str(info.value) == (
        "tool 'get_price' raised RuntimeError: price feed down — fix the tool, or raise "
        "ToolRetry(...) in it to send the problem back to the model instead"
    )
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.messages[-1].tool_calls[0].id == "c1"


def test_max_steps_bounds_the_loop() -> None:
    model = MockModel(default="unused").enqueue(*[[call(f"c{i}", symbol="BTC")] for i in range(5)])
    herd = make_herd({"desk": model})
    with pytest.raises(
        ToolLoopError, match=r"still asked for tools after max_steps=2 calls"
    ) as info:
        asyncio.run(herd.run_tools("desk", "price?", tools=[get_price], max_steps=2))
    assert len(model.history) == 2 and info.value.messages[-1].role == "tool"


def test_a_forced_choice_holds_for_the_first_call_only() -> None:
    model = MockModel().enqueue([call("c1", symbol="BTC")], "ok")
    herd = make_herd({"desk": model})
    asyncio.run(herd.run_tools("desk", "go", tools=[get_price], tool_choice="get_price"))
    assert [r.options["tool_choice"] for r in model.history] == ["get_price", "auto"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tools": []}, "run_tools needs tools= — pass the functions the model may call"),
        (
            {"tools": [{"name": "lookup", "parameters": {"type": "object"}}]},
            "run_tools runs the tools itself, but lookup has no function",
        ),
        ({"tools": [get_price], "max_steps": 0}, "max_steps=0 must be at least 1"),
    ],
)
def test_run_tools_refuses_what_it_cannot_run(kwargs: dict[str, Any], message: str) -> None:
    herd = make_herd({"desk": MockModel()})
    with pytest.raises(ConfigError) as info:
        asyncio.run(herd.run_tools("desk", "x", **kwargs))
    assert message in str(info.value)


def test_chat_checks_calls_against_the_schemas() -> None:
    model = MockModel().enqueue(
        [call("c1", symbol="BTC"), ToolCall(id="c2", name="sell", arguments={})]
    )
    herd = make_herd({"desk": model})
    response = herd.chat_sync("desk", "x", tools=[get_price])
    assert response.tool_calls[0].ok
    assert response.tool_calls[1].error == "there is no tool named 'sell' (tools: get_price)"


def test_stream_events_and_plain_stream() -> None:
    model = MockModel().enqueue([call("c1", symbol="BTC")], [call("c2", symbol="ETH")])
    herd = make_herd({"desk": model})

    async def go(**kwargs: Any) -> list[Any]:
        return [i async for i in herd.stream("desk", "x", tools=[get_price], **kwargs)]

    events = asyncio.run(go(events=True))
    assert events[0] == ToolCallStart(0, "c1", "get_price")
    deltas = [e.arguments for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) > 2 and json.loads("".join(deltas)) == {"symbol": "BTC"}
    end = next(e for e in events if isinstance(e, ToolCallEnd))
    assert end.call.ok and end.call.arguments == {"symbol": "BTC"}
    assert isinstance(events[-1], ChatResponse) and events[-1].tool_calls[0].id == "c1"
    plain = asyncio.run(go())
    assert len(plain) == 1 and plain[0].tool_calls[0].id == "c2"  # no events leak out

    herd2 = make_herd({"desk": MockModel().enqueue("hello there world")})
    texts = asyncio.run((lambda: _collect(herd2.stream("desk", "x", events=True)))())
    assert [t.text for t in texts[:-1]] == ["hello ", "there ", "world"]
    assert all(isinstance(t, TextDelta) for t in texts[:-1])


async def _collect(stream: Any) -> list[Any]:
    return [item async for item in stream]


class NoTools(MockModel):
    supports_tools = False


def test_a_fallback_without_tool_support_is_skipped_with_the_reason() -> None:
    class Provider:
        __name__ = "notools"

        @hookimpl(tryfirst=True)
        def provide_model(self, spec: Any, herd: Any) -> Any:
            if spec.alias == "plain":
                model = NoTools(spec, herd)
                model.enqueue("would not honour the tools")
                return model
            return None

    good = MockModel().enqueue([call("c1", symbol="BTC")])
    herd = make_herd(
        {"plain": MockModel(), "tooled": good},
        plugins=(Provider(),),
        fallbacks={"plain": ["tooled"]},
    )
    response = herd.chat_sync("plain", "x", tools=[get_price])
    assert response.fallback_from == "plain" and response.tool_calls[0].id == "c1"
    herd_alone = make_herd({"plain": MockModel()}, plugins=(Provider(),))
    with pytest.raises(ToolsUnsupportedError) as info:
        herd_alone.chat_sync("plain", "x", tools=[get_price])
    assert str(info.value) == (
        "'plain' (mock) cannot take tools: the mock provider does not take tools — use a "
        "model that does (docs/tools.md), or add one to [models.plain] fallbacks"
    )
    assert herd_alone.chat_sync("plain", "no tools here").content == "would not honour the tools"


def test_valid_calls_are_cached_and_invalid_ones_never() -> None:
    model = MockModel().enqueue(
        [call("c1", symbol="BTC")], [call("c2", symbol=5)], [call("c3", symbol=5)]
    )
    herd = make_herd({"desk": model}, plugins=(memory,))
    first = herd.chat_sync("desk", "a", tools=[get_price])
    again = herd.chat_sync("desk", "a", tools=[get_price])
    assert again.cache_tier == "memory" and again.tool_calls == first.tool_calls
    bad = herd.chat_sync("desk", "b", tools=[get_price])
    assert not bad.tool_calls[0].ok
    bad_again = herd.chat_sync("desk", "b", tools=[get_price])
    assert bad_again.cache_tier is None and bad_again.tool_calls[0].id == "c3"
    # other tools, another key
    other = herd.chat_sync("desk", "a", tools=[get_price], tool_choice="required")
    assert other.cache_tier is None
    assert len(model.history) == 4


class Verdict(BaseModel):
    action: Literal["BUY", "SELL", "NOTHING"]
    confidence: float


def test_output_type_is_sent_as_a_schema_and_parsed() -> None:
    model = MockModel().enqueue('{"action": "BUY", "confidence": 0.7}')
    herd = make_herd({"desk": model}, plugins=(memory,))
    response = herd.chat_sync("desk", "decide", output_type=Verdict)
    assert response.parsed == Verdict(action="BUY", confidence=0.7)
    fmt = model.history[0].options["response_format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "Verdict"
    assert fmt["schema"]["properties"]["action"]["enum"] == ["BUY", "SELL", "NOTHING"]
    hit = herd.chat_sync("desk", "decide", output_type=Verdict)
    assert hit.cache_tier == "memory" and hit.parsed == response.parsed


def test_a_bad_answer_is_retried_with_the_problem_fed_back_and_never_cached() -> None:
    model = MockModel().enqueue('{"action": "HOLD"}', '{"action": "SELL", "confidence": 1}')
    herd = make_herd({"desk": model}, plugins=(memory,))
    response = herd.chat_sync("desk", "decide", output_type=Verdict, output_retries=1)
    assert response.parsed.action == "SELL"
    feedback = model.history[1].messages[-1]
    assert feedback.role == "user" and feedback.text.startswith(
        "That answer does not fit the required JSON schema: action: Input should be 'BUY', "
        "'SELL' or 'NOTHING'"
    )
    assert "confidence: Field required" in feedback.text
    model.enqueue("not json", "still not json")
    with pytest.raises(OutputValidationError) as info:
        herd.chat_sync("desk", "other", output_type=Verdict, output_retries=1)
    assert str(info.value).startswith(
        "'desk' answered with something that does not fit Verdict after 2 tries: "
    )
    assert "pass output_retries=N to let the model correct itself" in str(info.value)
    assert info.value.response.content == "still not json"
    # the invalid answers were not cached: the next call goes to the model again
    model.enqueue('{"action": "NOTHING", "confidence": 0}')
    assert herd.chat_sync("desk", "other", output_type=Verdict).cache_tier is None


def test_output_type_as_json_schema_and_its_errors() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }
    model = MockModel().enqueue('```json\n{"n": 3}\n```', '{"n": "x"}')
    herd = make_herd({"desk": model})
    assert herd.chat_sync("desk", "x", output_type=schema).parsed == {"n": 3}
    with pytest.raises(OutputValidationError, match="n: 'x' is not of type 'integer'"):
        herd.chat_sync("desk", "y", output_type=schema)
    with pytest.raises(ConfigError, match="pass output_type= or response_format=, not both"):
        herd.chat_sync("desk", "x", output_type=Verdict, response_format={"type": "json_object"})
    with pytest.raises(ConfigError, match="output_type=42 is not valid"):
        herd.chat_sync("desk", "x", output_type=42)


def test_tool_results_in_messages_reach_the_model_as_given() -> None:
    model = MockModel()
    herd = make_herd({"desk": model})
    c = call("c1", symbol="BTC")
    herd.chat_sync(
        "desk",
        [
            {"role": "user", "content": "price?"},
            Message(role="assistant", tool_calls=[c]),
            Message.tool_result(c, 97000),
        ],
        tools=[get_price],
    )
    sent = model.history[0].messages
    assert sent[2].tool_call_id == "c1" and sent[2].content == "97000"


def test_identical_tool_calls_in_flight_share_one_upstream_call() -> None:
    model = MockModel(latency=0.05).enqueue([call("c1", symbol="BTC")], "unused")
    herd = make_herd({"desk": model})

    async def both() -> list[ChatResponse]:
        return list(
            await asyncio.gather(
                herd.chat("desk", "same", tools=[get_price]),
                herd.chat("desk", "same", tools=[get_price]),
            )
        )

    first, second = asyncio.run(both())
    assert len(model.history) == 1
    assert first.tool_calls == second.tool_calls and first.tool_calls is not second.tool_calls


def test_the_embedded_model_refuses_tools_before_loading_anything() -> None:
    from modelherd import Herd
    from modelherd.config import HerdConfig
    from modelherd.plugins.providers import llamacpp

    config = HerdConfig.model_validate(
        {"herd": {"default_model": "local"}, "models": {"local": {"provider": "llamacpp"}}}
    )
    herd = Herd(config, env={}, load_entry_points=False, plugins=(llamacpp,))
    with pytest.raises(ToolsUnsupportedError) as info:
        herd.chat_sync("local", "price?", tools=[get_price])
    assert str(info.value) == (
        "'local' (llamacpp) cannot take tools: this model has no tool template (the chat "
        "template in SmolLM2-135M-Instruct.Q4_1.gguf never mentions tools) — use a model "
        "that does (docs/tools.md), or add one to [models.local] fallbacks"
    )
    herd.close()
