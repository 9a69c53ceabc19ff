"""Coalescing: identical in-flight calls share one upstream call, its answer or its error."""

from __future__ import annotations

import asyncio
import time

import pytest
from cache_helpers import cached_herd
from modelherd.coalesce import Coalescer
from modelherd.errors import BadRequestError
from modelherd.testing import MockModel, make_herd
from modelherd.types import ChatResponse


def test_hundred_identical_calls_make_one_upstream_call() -> None:
    model = MockModel(latency=0.05)
    herd, _ = cached_herd(model)

    async def go() -> tuple[list[ChatResponse], float]:
        async with herd:
            start = time.perf_counter()
            out = await asyncio.gather(*(herd.chat("mock", "same") for _ in range(100)))
            return list(out), time.perf_counter() - start

    responses, took = asyncio.run(go())
    assert len(model.history) == 1
    assert {r.content for r in responses} == {"ok"}
    assert took < 0.5  # one 50 ms call, not 100 of them (the bench asserts < 60 ms)
    # each caller has its own object
    assert len({id(r) for r in responses}) == 100


@pytest.mark.parametrize("mode", ["no-store", "no-cache", "default"])
def test_coalescing_also_when_storing_is_off_or_no_tier(mode: str) -> None:
    model = MockModel(latency=0.03)
    herd = make_herd({"mock": model})  # no cache tier at all

    async def go() -> None:
        await asyncio.gather(*(herd.chat("mock", "same", cache=mode) for _ in range(10)))

    asyncio.run(go())
    assert len(model.history) == 1


def test_the_error_is_shared_too() -> None:
    model = MockModel(latency=0.03).enqueue(BadRequestError("bad prompt — fix it"))
    herd, _ = cached_herd(model)

    async def go() -> list[object]:
        async with herd:
            return await asyncio.gather(
                *(herd.chat("mock", "x") for _ in range(5)), return_exceptions=True
            )

    results = asyncio.run(go())
    assert all(isinstance(r, BadRequestError) for r in results)
    assert len(model.history) == 1


def test_sampled_calls_run_separately_unless_config_allows() -> None:
    model = MockModel(latency=0.02)
    herd, _ = cached_herd(model)

    async def go() -> None:
        async with herd:
            await asyncio.gather(*(herd.chat("mock", "s", temperature=0.9) for _ in range(4)))

    asyncio.run(go())
    assert len(model.history) == 4


def test_a_cancelled_follower_does_not_cancel_the_others() -> None:
    model = MockModel(latency=0.05)
    herd, _ = cached_herd(model)

    async def go() -> list[object]:
        async with herd:
            tasks = [asyncio.create_task(herd.chat("mock", "x")) for _ in range(3)]
            await asyncio.sleep(0.01)
            tasks[1].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)

    a, b, c = asyncio.run(go())
    assert isinstance(a, ChatResponse) and isinstance(c, ChatResponse)
    assert isinstance(b, asyncio.CancelledError)
    assert len(model.history) == 1


def test_a_cancelled_leader_hands_over_to_a_follower() -> None:
    model = MockModel(latency=0.05)
    herd, _ = cached_herd(model)

    async def go() -> list[object]:
        async with herd:
            leader = asyncio.create_task(herd.chat("mock", "x"))
            await asyncio.sleep(0.01)
            followers = [asyncio.create_task(herd.chat("mock", "x")) for _ in range(2)]
            await asyncio.sleep(0.01)
            leader.cancel()
            return await asyncio.gather(leader, *followers, return_exceptions=True)

    leader, f1, f2 = asyncio.run(go())
    assert isinstance(leader, asyncio.CancelledError)
    assert isinstance(f1, ChatResponse) and isinstance(f2, ChatResponse)
    assert len(model.history) == 2  # the cancelled flight, then one new one for both


def test_coalescer_counts_and_clears() -> None:
    co = Coalescer()

    async def slow() -> str:
        await asyncio.sleep(0.01)
        return "v"

    async def go() -> list[str]:
        return list(await asyncio.gather(*(co.run("k", slow) for _ in range(5))))

    assert asyncio.run(go()) == ["v"] * 5
    assert (co.led, co.joined, len(co)) == (1, 4, 0)


def test_only_the_leader_stores() -> None:
    from cache_helpers import Metrics

    metrics = Metrics()
    model = MockModel(latency=0.03)
    herd, _ = cached_herd(model, extra=(metrics,))

    async def go() -> None:
        async with herd:
            await asyncio.gather(*(herd.chat("mock", "same") for _ in range(20)))

    asyncio.run(go())
    assert metrics.per_tier("herd.cache.stores") == {"memory": 1}
