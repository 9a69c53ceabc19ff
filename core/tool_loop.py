"""`herd.run_tools(model, messages, tools=[fn, ...])`: call, run the chosen tools, send
the results back, repeat — until the model answers without calling a tool.

Each model call is an ordinary `herd.chat` (cache, quotas, retries, fallbacks, spans
all apply). The calls of one answer run concurrently, their results go back in the
model's order. Arguments that do not fit a tool's schema are not run: the reason
goes back to the model as the tool's result so it can correct itself, and so does a
`ToolRetry` raised by a tool. Any other exception from a tool stops the loop
(`ToolExecutionError`, the original as its cause): a tool that crashes is a bug the
caller must see, not something to paper over by asking the model again. Every
execution is a `ToolExecuted` event (the otel plugin makes it an `execute_tool` span).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

from .errors import ConfigError, HerdError
from .events import ToolExecuted
from .tools import Tool, as_tool_choice, as_tools
from .types import ChatResponse, Message, ToolCall

if TYPE_CHECKING:
    from .kernel import Herd


class ToolRetry(Exception):
    """Raise from a tool to send `message` back to the model as the call's result
    (bad input the schema could not catch: "no such ticker", "date in the future")."""


class ToolExecutionError(HerdError):
    """A tool's function raised; the loop stopped. `call` is the call that failed and
    `messages` the conversation up to it."""

    fallback_ok = False

    def __init__(self, call: ToolCall, exc: BaseException, messages: list[Message]) -> None:
        super().__init__(
            f"tool '{call.name}' raised {type(exc).__name__}: {exc} — fix the tool, or raise "
            f"ToolRetry(...) in it to send the problem back to the model instead"
        )
        self.call = call
        self.messages = messages


class ToolLoopError(HerdError):
    """The model still asked for tools after `max_steps` calls; `messages` holds the
    conversation so far."""

    fallback_ok = False

    def __init__(self, message: str, messages: list[Message]) -> None:
        super().__init__(message)
        self.messages = messages


@dataclass(slots=True)
class ToolResult:
    """One executed call: what the model asked for and what went back."""

    call: ToolCall
    message: Message
    #: the function's return value (None when the call was refused or retried)
    value: Any = None
    ok: bool = True


@dataclass(slots=True)
class ToolRun:
    """What `run_tools` returns."""

    #: the final answer (no tool calls)
    response: ChatResponse
    #: the whole conversation: what was passed in, each call and result, the answer
    messages: list[Message]
    #: model calls made
    steps: int
    executed: list[ToolResult] = field(default_factory=list)

    @property
    def content(self) -> str:
        return self.response.content


async def run_tools(
    herd: Herd,
    model: str | None,
    messages: str | Sequence[Message | dict[str, Any]],
    *,
    tools: Sequence[Any],
    max_steps: int = 8,
    tool_choice: Any = None,
    **kwargs: Any,
) -> ToolRun:
    if max_steps < 1:
        raise ConfigError(f"max_steps={max_steps} must be at least 1")
    defined = as_tools(tools)
    if not defined:
        raise ConfigError("run_tools needs tools= — pass the functions the model may call")
    without = [t.name for t in defined if t.function is None]
    if without:
        raise ConfigError(
            f"run_tools runs the tools itself, but {', '.join(without)} has no function — "
            f"pass functions (or Tool.from_function), or call herd.chat(tools=...) and run "
            f"the calls yourself"
        )
    choice = as_tool_choice(tool_choice, defined)
    conversation: list[Message] = (
        [Message(role="user", content=messages)]
        if isinstance(messages, str)
        else [m if isinstance(m, Message) else Message(**m) for m in messages]
    )
    executed: list[ToolResult] = []
    by_name = {t.name: t for t in defined}
    for step in range(1, max_steps + 1):
        options: dict[str, Any] = {"tools": defined}
        if choice is not None:
            options["tool_choice"] = choice
        response = await herd.chat(model, conversation, **options, **kwargs)
        if not response.tool_calls:
            conversation.append(Message(role="assistant", content=response.content))
            return ToolRun(response, conversation, step, executed)
        conversation.append(
            Message(role="assistant", content=response.content, tool_calls=response.tool_calls)
        )
        results = await _run_calls(herd, response.tool_calls, by_name, conversation, kwargs)
        executed += results
        conversation += [r.message for r in results]
        if choice not in (None, "auto", "none"):
            choice = "auto"  # a forced call, made once; forcing it again would never end
    raise ToolLoopError(
        f"the model still asked for tools after max_steps={max_steps} calls — raise "
        f"max_steps=, or make the tools' results lead it to an answer",
        conversation,
    )


async def _run_calls(
    herd: Herd,
    calls: list[ToolCall],
    tools: dict[str, Tool],
    conversation: list[Message],
    kwargs: dict[str, Any],
) -> list[ToolResult]:
    results: list[ToolResult | None] = [None] * len(calls)
    failure: list[ToolExecutionError] = []

    async def one(index: int, call: ToolCall) -> None:
        try:
            results[index] = await _run_one(herd, call, tools, kwargs)
        except ToolExecutionError as exc:
            failure.append(exc)

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(one, index, call)
    if failure:
        error = failure[0]
        error.messages = list(conversation)
        raise error
    return [r for r in results if r is not None]


async def _run_one(
    herd: Herd, call: ToolCall, tools: dict[str, Tool], kwargs: dict[str, Any]
) -> ToolResult:
    start_ns = time.time_ns()
    tool = tools.get(call.name)
    error_type: str | None = None
    value: Any = None
    if call.error is not None or tool is None:
        error_type = "ToolArgumentsError"
        result = Message.tool_error(call, call.error or f"there is no tool named '{call.name}'")
    else:
        try:
            value = await tool.invoke(call)
            result = Message.tool_result(call, _as_text(value))
        except ToolRetry as exc:
            error_type = "ToolRetry"
            result = Message.tool_error(call, str(exc))
        except HerdError as exc:  # ToolArgumentsError from a stricter check in the tool
            if type(exc).__name__ != "ToolArgumentsError":
                _track(herd, call, tool, "", start_ns, type(exc).__name__, kwargs)
                raise ToolExecutionError(call, exc, []) from exc
            error_type = "ToolArgumentsError"
            result = Message.tool_error(call, str(exc))
        except Exception as exc:
            _track(herd, call, tool, "", start_ns, type(exc).__name__, kwargs)
            raise ToolExecutionError(call, exc, []) from exc
    _track(herd, call, tool, result.text, start_ns, error_type, kwargs)
    return ToolResult(call, result, value, error_type is None)


def _track(
    herd: Herd,
    call: ToolCall,
    tool: Tool | None,
    result: str,
    start_ns: int,
    error_type: str | None,
    kwargs: dict[str, Any],
) -> None:
    herd.track(
        ToolExecuted(
            name=call.name,
            call_id=call.id,
            description=tool.description if tool is not None else "",
            arguments=call.raw_arguments or json.dumps(call.arguments),
            result=result,
            start_ns=start_ns,
            end_ns=time.time_ns(),
            error_type=error_type,
            agent=kwargs.get("agent"),
            tenant=kwargs.get("tenant"),
        )
    )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, ensure_ascii=False, default=str)
