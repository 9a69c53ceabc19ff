"""The call pipeline on MockModels: retries, fallbacks, timeouts, streaming, hooks."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from modelherd import (
    AllModelsFailedError,
    AuthenticationError,
    BadRequestError,
    CacheMissError,
    CallTimeoutError,
    ChatResponse,
    CircuitOpenError,
    ConfigError,
    Herd,
    Metric,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    UnknownModelError,
    hookimpl,
)
from modelherd.testing import MockModel, make_herd


def test_chat_returns_the_models_answer_with_usage_and_latency(
    mock_herd: Herd, mock_model: MockModel
) -> None:
    mock_model.enqueue("BUY now")
    response = mock_herd.chat_sync("mock", "decide", temperature=0)
    assert response.content == "BUY now"
    assert response.provider == "mock" and response.alias == "mock"
    assert response.usage.output_tokens == 2
    assert response.latency_s > 0
    assert response.attempts == 1
    assert mock_model.history[0].messages[0].content == "decide"
    assert mock_model.history[0].options == {"temperature": 0}


def test_messages_may_be_dicts_and_system_prompts(mock_herd: Herd, mock_model: MockModel) -> None:
    mock_herd.chat_sync(
        "mock", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert [m.role for m in mock_model.history[0].messages] == ["system", "user"]


def test_empty_messages_is_a_clear_error(mock_herd: Herd) -> None:
    with pytest.raises(ConfigError, match="messages is empty"):
        mock_herd.chat_sync("mock", [])


def test_unknown_alias_suggests_close_names(mock_herd: Herd) -> None:
    with pytest.raises(UnknownModelError, match="did you mean 'mock'"):
        mock_herd.chat_sync("mokc", "hi")


def test_provider_slash_model_resolves_without_config(
    mock_herd: Herd, mock_model: MockModel
) -> None:
    response = mock_herd.chat_sync("mock/other-model", "hi")
    assert response.model == "other-model"


def test_retry_after_is_honoured_then_succeeds() -> None:
    mock_model = MockModel()
    herd = make_herd({"mock": mock_model}, config={"herd": {"backoff_max": 1.0}})
    mock_model.enqueue(RateLimitError("slow down", retry_after=0.2), "done")
    start = time.perf_counter()
    response = herd.chat_sync("mock", "hi")
    assert time.perf_counter() - start >= 0.2
    assert response.content == "done" and response.attempts == 2


def test_retryable_errors_give_up_after_the_configured_retries(
    mock_herd: Herd, mock_model: MockModel
) -> None:
    mock_model.enqueue(*[ProviderError("500 from upstream")] * 5)
    with pytest.raises(ProviderError, match="500 from upstream"):
        mock_herd.chat_sync("mock", "hi")
    assert len(mock_model.history) == 3  # first try + retries = 2


@pytest.mark.parametrize(
    "error", [BadRequestError("bad field"), AuthenticationError("key refused")]
)
def test_non_retryable_errors_are_not_retried(
    mock_herd: Herd, mock_model: MockModel, error: Exception
) -> None:
    mock_model.enqueue(error, "never")
    with pytest.raises(type(error)):
        mock_herd.chat_sync("mock", "hi")
    assert len(mock_model.history) == 1


def test_retry_after_longer_than_the_cap_is_not_waited_for(
    mock_herd: Herd, mock_model: MockModel
) -> None:
    mock_model.enqueue(RateLimitError("come back in an hour", retry_after=3600), "never")
    start = time.perf_counter()
    with pytest.raises(RateLimitError) as info:
        mock_herd.chat_sync("mock", "hi")
    assert time.perf_counter() - start < 1
    assert info.value.retry_after == 3600


def test_fallback_chain_answers_and_says_so() -> None:
    primary, backup = MockModel(), MockModel()
    herd = make_herd({"main": primary, "backup": backup}, fallbacks={"main": ["backup"]})
    primary.enqueue(*[ProviderError("down")] * 3)
    backup.enqueue("from backup")
    response = herd.chat_sync("main", "hi")
    assert response.content == "from backup"
    assert response.fallback_from == "main" and response.alias == "backup"


def test_every_model_failing_lists_each_error() -> None:
    primary, backup = MockModel(), MockModel()
    herd = make_herd({"main": primary, "backup": backup}, fallbacks={"main": ["backup"]})
    primary.enqueue(AuthenticationError("OPENAI_API_KEY was refused"))
    backup.enqueue(AuthenticationError("ANTHROPIC_API_KEY was refused"))
    with pytest.raises(AllModelsFailedError) as info:
        herd.chat_sync("main", "hi")
    message = str(info.value)
    assert "every model for 'main' failed" in message
    assert "main: OPENAI_API_KEY was refused" in message and "backup: ANTHROPIC_API_KEY" in message


def test_errors_that_forbid_fallback_stop_the_chain() -> None:
    primary, backup = MockModel(), MockModel()
    herd = make_herd({"main": primary, "backup": backup}, fallbacks={"main": ["backup"]})
    primary.enqueue(BadRequestError("schema invalid"))
    with pytest.raises(BadRequestError):
        herd.chat_sync("main", "hi")
    assert backup.history == []


def test_timeout_is_a_typed_error_that_says_what_to_do() -> None:
    slow = MockModel(latency=1.0)
    herd = make_herd({"slow": slow}, config={"herd": {"retries": 0}})
    start = time.perf_counter()
    with pytest.raises(
        CallTimeoutError, match=r"gave no answer within 0.1s — pass a larger timeout="
    ):
        herd.chat_sync("slow", "hi", timeout=0.1)
    assert time.perf_counter() - start < 0.9


def test_a_provider_bug_is_reported_typed_and_not_retried(
    mock_herd: Herd, mock_model: MockModel
) -> None:
    mock_model.enqueue(KeyError("choices"), "never")
    with pytest.raises(ProviderError, match=r"raised KeyError.*bug in its plugin"):
        mock_herd.chat_sync("mock", "hi")
    assert len(mock_model.history) == 1


def test_cache_only_without_tiers_is_a_clear_miss(mock_herd: Herd) -> None:
    with pytest.raises(CacheMissError, match='without cache="only"'):
        mock_herd.chat_sync("mock", "hi", cache="only")


def test_stream_yields_chunks_then_the_response(mock_herd: Herd, mock_model: MockModel) -> None:
    mock_model.enqueue("one two three")

    async def collect() -> list[Any]:
        return [item async for item in mock_herd.stream("mock", "count")]

    items = anyio.run(collect)
    assert items[:-1] == ["one ", "two ", "three"]
    assert isinstance(items[-1], ChatResponse) and items[-1].content == "one two three"


def test_stream_retries_before_the_first_chunk_and_falls_back() -> None:
    primary, backup = MockModel(), MockModel()
    herd = make_herd({"main": primary, "backup": backup}, fallbacks={"main": ["backup"]})
    primary.enqueue(*[ProviderError("down")] * 3)
    backup.enqueue("safe answer")

    async def collect() -> list[Any]:
        return [item async for item in herd.stream("main", "hi")]

    items = anyio.run(collect)
    assert "".join(i for i in items if isinstance(i, str)) == "safe answer"
    assert items[-1].fallback_from == "main"
    assert len(primary.history) == 3


def test_identical_concurrent_calls_share_one_upstream_call() -> None:
    slow = MockModel(latency=0.05)
    herd = make_herd({"m": slow})

    async def many() -> list[ChatResponse]:
        results: list[ChatResponse] = []

        async def one() -> None:
            results.append(await herd.chat("m", "same question", temperature=0))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        return results

    results = anyio.run(many)
    assert len(results) == 20 and len(slow.history) == 1


def test_sampled_calls_are_not_coalesced() -> None:
    slow = MockModel(latency=0.02)
    herd = make_herd({"m": slow})

    async def many() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(lambda: herd.chat("m", "same", temperature=0.9))

    anyio.run(many)
    assert len(slow.history) == 5


class Recorder:
    """Implements every per-call hook and records what it saw."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.metrics: list[Metric] = []

    @hookimpl
    def acquire_admission(self, request: Any, herd: Herd) -> Any:
        events = self.events

        @asynccontextmanager
        async def gate() -> Any:
            events.append("admit")
            try:
                yield
            finally:
                events.append("release")

        return gate()

    @hookimpl
    def before_call(self, request: Any, herd: Herd) -> None:
        self.events.append(f"before:{request.alias}")
        request.options["n_ctx"] = 512

    @hookimpl
    def after_call(self, request: Any, response: ChatResponse, herd: Herd) -> None:
        self.events.append(f"after:{response.content}")

    @hookimpl
    def on_error(self, request: Any, error: BaseException, herd: Herd, final: bool) -> None:
        self.events.append(f"error:{type(error).__name__}:{final}")

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        self.metrics.append(metric)


def test_hooks_run_in_pipeline_order(
    mock_herd: Herd, mock_model: MockModel, with_plugin: Any
) -> None:
    recorder = with_plugin(Recorder())
    mock_model.enqueue(ProviderError("blip"), "fine")
    mock_herd.chat_sync("mock", "hi")
    assert recorder.events == [
        "admit",
        "before:mock",
        "error:ProviderError:False",
        "before:mock",
        "after:fine",
        "release",
    ]
    assert mock_model.history[-1].options["n_ctx"] == 512
    names = {m.name for m in recorder.metrics}
    assert {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "herd.retries",
    } <= names
    duration = next(m for m in recorder.metrics if m.name == "gen_ai.client.operation.duration")
    assert duration.attributes["gen_ai.provider.name"] == "mock" and duration.kind == "histogram"


def test_final_error_reaches_on_error_marked_final(
    mock_herd: Herd, mock_model: MockModel, with_plugin: Any
) -> None:
    recorder = with_plugin(Recorder())
    mock_model.enqueue(BadRequestError("nope"))
    with pytest.raises(BadRequestError):
        mock_herd.chat_sync("mock", "hi")
    assert recorder.events[-2:] == ["error:BadRequestError:True", "release"]
    assert any(m.name == "herd.errors" for m in recorder.metrics)


def test_admission_refusal_reaches_the_caller_and_skips_the_model(
    mock_herd: Herd, mock_model: MockModel, with_plugin: Any
) -> None:
    class Quota:
        __name__ = "quota"

        @hookimpl(tryfirst=True)
        def acquire_admission(self, request: Any, herd: Herd) -> Any:
            raise QuotaExceededError(
                "tenant 'bob' is over 10 requests/min — resets in 12s", retry_after=12
            )

    with_plugin(Quota())
    with pytest.raises(QuotaExceededError, match="resets in 12s") as info:
        mock_herd.chat_sync("mock", "hi", tenant="bob")
    assert info.value.retry_after == 12 and mock_model.history == []


def _gate(events: list[str], name: str) -> Any:
    @asynccontextmanager
    async def gate() -> Any:
        events.append(f"enter:{name}")
        try:
            yield
        finally:
            events.append(f"exit:{name}")

    return gate()


def test_admission_gates_are_entered_in_pluggy_order_and_none_is_no_gate(
    mock_herd: Herd, mock_model: MockModel, with_plugin: Any
) -> None:
    # the kernel calls acquire_admission from a prepared list: it must keep pluggy's order
    # (tryfirst first, then the last registered) and skip the Nones
    events: list[str] = []

    class First:
        __name__ = "first"

        @hookimpl(tryfirst=True)
        def acquire_admission(self, request: Any, herd: Herd) -> Any:
            return _gate(events, "first")

    class Nothing:
        __name__ = "nothing"

        @hookimpl
        def acquire_admission(self, request: Any, herd: Herd) -> Any:
            events.append("asked:nothing")
            return None

    class Last:
        __name__ = "last"

        @hookimpl
        def acquire_admission(self, request: Any, herd: Herd) -> Any:
            return _gate(events, "last")

    with_plugin(First())
    with_plugin(Nothing())
    with_plugin(Last())
    assert mock_herd.chat_sync("mock", "hi").content == "ok"
    assert events == ["asked:nothing", "enter:first", "enter:last", "exit:last", "exit:first"]
    events.clear()
    chunks = anyio.run(_collect_stream, mock_herd)
    assert chunks[-1].content == "ok"
    assert events == ["asked:nothing", "enter:first", "enter:last", "exit:last", "exit:first"]


async def _collect_stream(herd: Herd) -> list[Any]:
    return [item async for item in herd.stream("mock", "hi")]


def test_an_admission_wrapper_is_run_by_pluggy(
    mock_herd: Herd, mock_model: MockModel, with_plugin: Any
) -> None:
    # a wrapper cannot be called from the prepared list: pluggy runs the hook then
    events: list[str] = []

    class Gate:
        __name__ = "gate"

        @hookimpl
        def acquire_admission(self, request: Any, herd: Herd) -> Any:
            return _gate(events, "gate")

    class Wrapper:
        __name__ = "wrapper"

        @hookimpl(wrapper=True)
        def acquire_admission(self, request: Any, herd: Herd) -> Any:
            events.append("wrapped:before")
            gates = yield
            events.append(f"wrapped:{len(gates)}")
            return gates

    with_plugin(Gate())
    with_plugin(Wrapper())
    assert mock_herd.chat_sync("mock", "hi").content == "ok"
    assert events == ["wrapped:before", "wrapped:1", "enter:gate", "exit:gate"]


def test_before_call_may_answer_or_open_a_circuit() -> None:
    primary, backup = MockModel(), MockModel()
    herd = make_herd({"main": primary, "backup": backup}, fallbacks={"main": ["backup"]})

    class Breaker:
        __name__ = "breaker"

        @hookimpl(tryfirst=True)
        def before_call(self, request: Any, herd: Herd) -> ChatResponse | None:
            if request.alias == "main":
                raise CircuitOpenError("circuit for 'main' is open — retry in 30s")
            return None

    herd.register_plugin(Breaker())
    backup.enqueue("backup served")
    assert herd.chat_sync("main", "hi").content == "backup served"
    assert primary.history == []


def test_validate_false_is_returned_and_reported(
    mock_herd: Herd, mock_model: MockModel, with_plugin: Any
) -> None:
    recorder = with_plugin(Recorder())
    mock_model.enqueue("not json")
    response = mock_herd.chat_sync("mock", "hi", validate=lambda r: r.content.startswith("{"))
    assert response.content == "not json"
    quality = [m for m in recorder.metrics if m.name == "herd.validation"]
    assert [m.value for m in quality] == [0.0]


def test_sync_facade_reuses_one_loop_and_closes_models(
    mock_herd: Herd, mock_model: MockModel
) -> None:
    mock_herd.chat_sync("mock", "a")
    mock_herd.chat_sync("mock", "b")
    mock_herd.close()
    assert mock_model.closed


def test_async_context_manager_starts_and_closes() -> None:
    model = MockModel()
    herd = make_herd({"m": model})

    async def go() -> str:
        async with herd:
            return (await herd.chat("m", "x")).content

    assert anyio.run(go) == "ok"
    assert model.closed


def test_a_fallback_gets_its_own_defaults_not_the_primarys() -> None:
    primary, backup = MockModel(), MockModel()
    herd = make_herd(
        {"main": primary, "backup": backup},
        fallbacks={"main": ["backup"]},
        config={
            "models": {
                "main": {
                    "provider": "mock",
                    "model": "m1",
                    "fallbacks": ["backup"],
                    "options": {"num_ctx": 4096},
                    "timeout": 5,
                },
                "backup": {"provider": "mock", "model": "m2", "options": {"max_tokens": 99}},
            }
        },
    )
    primary.enqueue(*[ProviderError("down")] * 3)
    backup.enqueue("from backup")
    response = herd.chat_sync("main", "hi", temperature=0.1)
    assert response.content == "from backup"
    assert primary.history[0].options == {"num_ctx": 4096, "temperature": 0.1}
    assert backup.history[0].options == {"max_tokens": 99, "temperature": 0.1}
    assert backup.history[0].timeout is None  # the primary's alias timeout stays with it
