"""chat and stream take one road: every failure is wrapped, hooked and counted alike.

Each test runs on both roads (the `road` fixture): what a caller of `herd.chat` sees
for a failure, a caller of `herd.stream` sees too — the same typed error, exactly one
`on_error(final=True)`, one `herd.errors` metric — admission refusals included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from modelherd import (
    AllModelsFailedError,
    BadResponseError,
    CacheMissError,
    ChatResponse,
    Herd,
    Metric,
    ModelSpec,
    ProviderError,
    QuotaExceededError,
    hookimpl,
)
from modelherd.plugins.cache import memory as cache_memory
from modelherd.testing import MockModel, make_herd

Road = Callable[..., Awaitable[ChatResponse]]


class Recorder:
    __name__ = "recorder"

    def __init__(self) -> None:
        self.finals: list[str] = []
        self.attempts: list[str] = []
        self.metrics: list[Metric] = []

    @hookimpl
    def on_error(self, request: Any, error: BaseException, herd: Herd, final: bool) -> None:
        (self.finals if final else self.attempts).append(type(error).__name__)

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        self.metrics.append(metric)

    def count(self, name: str) -> int:
        return sum(1 for m in self.metrics if m.name == name)


@pytest.fixture(params=["chat", "stream"])
def road(request: pytest.FixtureRequest) -> Callable[[Herd], Road]:
    """`road(herd)` -> an async call taking chat's arguments, on the chosen road."""

    def bind(herd: Herd) -> Road:
        async def via_chat(*args: Any, **kwargs: Any) -> ChatResponse:
            return await herd.chat(*args, **kwargs)

        async def via_stream(*args: Any, **kwargs: Any) -> ChatResponse:
            items = [item async for item in herd.stream(*args, **kwargs)]
            assert isinstance(items[-1], ChatResponse)
            text = "".join(i for i in items if isinstance(i, str))
            assert text == items[-1].content  # the chunks are the answer
            return items[-1]

        return via_chat if request.param == "chat" else via_stream

    return bind


def call(road: Road, *args: Any, **kwargs: Any) -> ChatResponse:
    async def go() -> ChatResponse:
        return await road(*args, **kwargs)

    return anyio.run(go)


def test_a_provider_bug_is_a_typed_error_reported_once(road: Callable[[Herd], Road]) -> None:
    model, recorder = MockModel(), Recorder()
    herd = make_herd({"m": model}, plugins=(recorder,))
    model.enqueue(RuntimeError("boom"), "never")
    with pytest.raises(ProviderError, match=r"raised RuntimeError: boom.*bug in its plugin"):
        call(road(herd), "m", "hi")
    assert len(model.history) == 1  # a bug is not retried
    assert recorder.finals == ["ProviderError"] and recorder.attempts == ["ProviderError"]
    assert recorder.count("herd.errors") == 1


def test_an_admission_refusal_reaches_on_error_and_the_error_metric(
    road: Callable[[Herd], Road],
) -> None:
    class Quota:
        __name__ = "quota"

        @hookimpl(tryfirst=True)
        def acquire_admission(self, request: Any, herd: Herd) -> Any:
            raise QuotaExceededError("tenant 'bob' is over 10 requests/min — resets in 12s")

    model, recorder = MockModel(), Recorder()
    herd = make_herd({"m": model}, plugins=(recorder, Quota()))
    with pytest.raises(QuotaExceededError, match="resets in 12s"):
        call(road(herd), "m", "hi", tenant="bob")
    assert model.history == []
    assert recorder.finals == ["QuotaExceededError"]
    errors = [m for m in recorder.metrics if m.name == "herd.errors"]
    assert len(errors) == 1 and errors[0].attributes["error.type"] == "QuotaExceededError"


def test_a_cache_only_miss_is_reported_like_any_failure(road: Callable[[Herd], Road]) -> None:
    recorder = Recorder()
    herd = make_herd({"m": MockModel()}, plugins=(recorder,))
    with pytest.raises(CacheMissError, match='without cache="only"'):
        call(road(herd), "m", "hi", cache="only")
    assert recorder.finals == ["CacheMissError"] and recorder.count("herd.errors") == 1


def test_fallbacks_are_counted_and_every_error_is_listed(road: Callable[[Herd], Road]) -> None:
    primary, backup, recorder = MockModel(), MockModel(), Recorder()
    herd = make_herd(
        {"main": primary, "backup": backup}, fallbacks={"main": ["backup"]}, plugins=(recorder,)
    )
    primary.enqueue(*[ProviderError("main is down")] * 3)
    backup.enqueue(*[ProviderError("backup is down")] * 3)
    with pytest.raises(AllModelsFailedError) as info:
        call(road(herd), "main", "hi")
    assert "main is down" in str(info.value) and "backup is down" in str(info.value)
    assert recorder.count("herd.fallbacks") == 1
    assert recorder.count("herd.retries") == 4  # two retries on each model
    assert recorder.finals == ["AllModelsFailedError"] and recorder.count("herd.errors") == 1


def test_an_unfinished_answer_is_never_returned_as_complete(
    road: Callable[[Herd], Road], request: pytest.FixtureRequest
) -> None:
    cut = ChatResponse(content="BUY 0.9", model="m", provider="mock", finish_reason="unknown")
    model, recorder = MockModel(), Recorder()
    herd = make_herd({"m": model}, plugins=(recorder, cache_memory))
    model.enqueue(cut, "SELL 0.6")
    if request.node.callspec.params["road"] == "chat":
        # nothing reached the caller yet: the unfinished answer is retried
        answer = call(road(herd), "m", "decide", temperature=0)
        assert answer.content == "SELL 0.6" and answer.finish_reason == "stop"
        assert recorder.attempts == ["BadResponseError"]
    else:
        # its text was already streamed: the caller gets the error, not a retry
        with pytest.raises(BadResponseError, match="unfinished answer"):
            call(road(herd), "m", "decide", temperature=0)
        model.queue.clear()

    model.enqueue(*[cut] * 3)
    with pytest.raises(BadResponseError, match="unfinished answer"):
        call(road(herd), "m", "another question", temperature=0)
    model.queue.clear()  # the stream road gave up at the first (streamed) one
    # nothing unfinished was stored: asking again goes upstream
    model.enqueue("NOTHING 0.5")
    again = call(road(herd), "m", "another question", temperature=0)
    assert again.content == "NOTHING 0.5" and again.cache_tier is None


def test_a_fallbacks_answer_is_cached_under_the_model_that_gave_it(
    road: Callable[[Herd], Road],
) -> None:
    primary = MockModel(ModelSpec(alias="main", provider="mock", model="big"))
    backup = MockModel(ModelSpec(alias="backup", provider="mock", model="small"))
    herd = make_herd(
        {"main": primary, "backup": backup},
        fallbacks={"main": ["backup"]},
        plugins=(cache_memory,),
    )
    primary.enqueue(*[ProviderError("down")] * 3)
    backup.enqueue("backup's answer")
    first = call(road(herd), "main", "q", temperature=0)
    assert first.fallback_from == "main"
    # the primary recovered: it is asked again, not served the fallback's answer
    primary.enqueue("primary's answer")
    assert call(road(herd), "main", "q", temperature=0).content == "primary's answer"
    # the fallback's answer is a hit for a call to the fallback itself
    direct = call(road(herd), "backup", "q", temperature=0)
    assert direct.content == "backup's answer" and direct.cache_tier == "memory"
    assert direct.fallback_from is None


def test_a_stream_that_breaks_after_its_first_chunk_is_not_retried() -> None:
    class Breaks(MockModel):
        async def stream(self, request: Any) -> Any:
            self.history.append(request)
            yield "half an "
            raise ProviderError("connection reset mid-stream")

    model, recorder = Breaks(), Recorder()
    herd = make_herd({"m": model}, plugins=(recorder,))

    async def go() -> list[Any]:
        seen: list[Any] = []
        with pytest.raises(ProviderError, match="mid-stream"):
            async for item in herd.stream("m", "hi"):
                seen.append(item)
        return seen

    assert anyio.run(go) == ["half an "]
    assert len(model.history) == 1 and recorder.finals == ["ProviderError"]


def test_a_caller_that_stops_reading_closes_the_providers_stream() -> None:
    closed: list[bool] = []

    class Long(MockModel):
        async def stream(self, request: Any) -> Any:
            try:
                for word in ("a ", "b ", "c "):
                    yield word
            finally:
                closed.append(True)

    herd = make_herd({"m": Long()})

    async def go() -> None:
        stream = herd.stream("m", "hi")
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]

    anyio.run(go)
    assert closed == [True]


def test_prepare_runs_once_outside_the_attempts_timeout() -> None:
    calls: list[str] = []

    class SlowToImport(MockModel):
        async def prepare(self) -> None:
            calls.append("prepare")
            await anyio.sleep(0.3)  # an SDK import: longer than the call's timeout

    model = SlowToImport()
    herd = make_herd({"m": model})

    async def go() -> list[str]:
        answers = [(await herd.chat("m", "hi", timeout=0.2)).content]
        answers.append((await herd.chat("m", "again", timeout=0.2)).content)
        return answers

    assert anyio.run(go) == ["ok", "ok"]
    assert calls == ["prepare"]
