"""The load-state scheduler: state machine, priority queue, and per-state actions."""

from __future__ import annotations

import asyncio

import pytest
from modelherd import Herd, hookimpl
from modelherd.errors import ConfigError, OverloadedError
from modelherd.plugins.resources import scheduler as scheduler_plugin
from modelherd.plugins.resources.scheduler import runtime as scheduler_core
from modelherd.plugins.resources.scheduler.load_state import (
    LoadStateMachine,
    Signals,
    Thresholds,
    pressure,
)
from modelherd.plugins.resources.scheduler.runtime import Scheduler
from modelherd.testing import MockModel, make_herd
from modelherd.types import Metric

pytestmark = pytest.mark.anyio


def signals(**kw: float) -> Signals:
    base = dict(
        in_flight=0,
        capacity=10,
        queued=0,
        max_queue=100,
        p95_wait_s=0.0,
        queue_timeout_s=30.0,
        p95_latency_s=0.0,
        target_latency_s=None,
        memory_used=0.3,
        seconds_since_call=0.0,
    )
    base.update(kw)
    return Signals(**base)


def test_state_from_each_signal() -> None:
    t = Thresholds()
    assert pressure(signals(in_flight=3), t) < t.medium
    assert t.medium <= pressure(signals(in_flight=7), t) < t.high
    assert pressure(signals(in_flight=10), t) == pytest.approx(t.high)
    assert t.high <= pressure(signals(in_flight=10, queued=5), t) < t.critical
    assert pressure(signals(in_flight=10, queued=80), t) >= t.critical
    assert pressure(signals(p95_wait_s=16.0), t) >= t.critical  # half the deadline
    assert pressure(signals(p95_latency_s=2.0, target_latency_s=2.0), t) == pytest.approx(t.high)
    assert pressure(signals(memory_used=0.95), t) >= t.critical


def test_hysteresis_up_at_once_down_after_calm_cooldown() -> None:
    m = LoadStateMachine(Thresholds(cooldown_s=2.0, idle_after_s=5.0))
    assert m.update(signals(in_flight=10, queued=1), now=0.0) == ("idle", "high")
    # pressure just under the high threshold is not calm enough (hysteresis 0.1)
    assert m.update(signals(in_flight=9), now=1.0)[1] == "high"
    assert m.update(signals(in_flight=9), now=10.0)[1] == "high"
    m.update(signals(in_flight=2), now=11.0)
    assert m.state == "high"  # calm, but not for 2 s yet
    assert m.update(signals(in_flight=2), now=13.1)[1] == "low"
    # a spike resets the calm clock
    m.update(signals(in_flight=10, queued=90), now=14.0)
    assert m.state == "critical"
    m.update(signals(in_flight=1), now=15.0)
    m.update(signals(in_flight=10, queued=90), now=16.0)
    m.update(signals(in_flight=1), now=17.5)
    assert m.state == "critical"
    # calm since 17.5: idle is the target, but only after the 2 s cooldown
    assert m.update(signals(in_flight=0, seconds_since_call=6.0), now=19.0)[1] == "critical"
    assert m.update(signals(in_flight=0, seconds_since_call=8.0), now=19.6)[1] == "idle"


class StateLog:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.metrics: list[Metric] = []

    @hookimpl
    def on_load_state(self, old: str, new: str, herd: Herd) -> None:
        self.changes.append((old, new))

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        if metric.name.startswith("herd.load_state"):
            self.metrics.append(metric)


def sched_herd(
    settings: dict[str, object],
    latency: float = 0.05,
    fallbacks: dict[str, list[str]] | None = None,
    models: tuple[str, ...] = ("mock",),
    extra: tuple[object, ...] = (),
) -> Herd:
    return make_herd(
        {m: MockModel(latency=latency) for m in models},
        config={"plugins": {"scheduler": {"enabled": True, **settings}}},
        plugins=(scheduler_plugin, *extra),
        fallbacks=fallbacks,
    )


async def test_disabled_by_default_registers_nothing() -> None:
    herd = make_herd({"mock": MockModel()}, plugins=(scheduler_plugin,))
    await herd.start()
    assert herd.pm.get_plugin("scheduler-calls") is None
    assert not herd._has["acquire_admission"] and not herd._has["before_call"]


def test_bad_settings_one_line() -> None:
    herd = make_herd(config={"plugins": {"scheduler": {"actions": {"low": ["shed"]}}}})
    with pytest.raises(
        ConfigError,
        match=r"test config: \[plugins.scheduler\]: Value "
        r"error, actions.low: shed cannot run in state low",
    ):
        scheduler_core.load_settings(herd)


async def test_priority_queue_serves_higher_priority_first() -> None:
    herd = sched_herd({"max_concurrency": 1, "queue_timeout_s": 5})
    order: list[int] = []
    model = herd.get_model("mock")
    assert isinstance(model, MockModel)
    model.default = "x"

    async def call(priority: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await herd.chat("mock", f"p{priority}", priority=priority, cache="no-store")
        order.append(priority)

    await asyncio.gather(call(0, 0), call(1, 0.01), call(5, 0.02), call(3, 0.03))
    assert order == [0, 5, 3, 1]  # the first runs at once, then highest priority first
    await herd.aclose()


async def test_bounded_queue_and_deadline_shed_with_retry_after() -> None:
    herd = sched_herd(
        {"max_concurrency": 1, "max_queue": 1, "queue_timeout_s": 0.1, "actions": {"critical": []}},
        latency=0.3,
    )
    results = await asyncio.gather(
        *[herd.chat("mock", str(i)) for i in range(3)], return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, OverloadedError)]
    assert len(errors) == 2
    messages = sorted(str(e) for e in errors)
    assert "the queue is full (1 waiting)" in messages[0] + messages[1]
    assert "waited 0.1s in the queue" in messages[0] + messages[1]
    assert all(e.retry_after and e.retry_after > 0 for e in errors)
    # a higher-priority newcomer pushes the lowest waiter out of a full queue
    pushed = await asyncio.gather(
        herd.chat("mock", "a"),
        herd.chat("mock", "b", priority=0),
        herd.chat("mock", "c", priority=9),
        return_exceptions=True,
    )
    assert isinstance(pushed[1], OverloadedError)
    assert "shed from a full queue for a higher-priority one" in str(pushed[1])
    await herd.aclose()


async def test_states_go_to_hook_and_metrics_and_critical_sheds_low_priority() -> None:
    log = StateLog()
    herd = sched_herd(
        {
            "max_concurrency": 2,
            "max_queue": 4,
            "queue_timeout_s": 5,
            "cooldown_s": 0.0,
            "hysteresis": 0.0,
            "shed_priority": 0,
        },
        latency=0.2,
        extra=(log,),
    )
    tasks = [asyncio.create_task(herd.chat("mock", str(i), priority=5)) for i in range(6)]
    await asyncio.sleep(0.05)
    plugin = herd.pm.get_plugin("scheduler-calls")
    assert isinstance(plugin, Scheduler)
    assert plugin.state == "critical"  # 2 running, 4 queued = full queue
    with pytest.raises(
        OverloadedError,
        match=r"call shed: modelherd is overloaded \(critical; "
        r"priority 0 <= 0\) — retry in ",
    ):
        await herd.chat("mock", "low")
    await asyncio.gather(*tasks)
    plugin.evaluate(force=True)
    assert log.changes[:3] == [("idle", "low"), ("low", "high"), ("high", "critical")]
    assert log.changes[-1][1] in ("low", "medium")
    assert any(m.attributes["herd.load_state"] == "critical" for m in log.metrics)
    assert all(m.kind == "gauge" for m in log.metrics)
    await herd.aclose()


async def test_high_load_spills_to_fallback() -> None:
    herd = sched_herd(
        {"max_concurrency": 2, "queue_timeout_s": 5, "actions": {"critical": []}},
        latency=0.1,
        models=("main", "spare"),
        fallbacks={"main": ["spare"]},
    )
    results = await asyncio.gather(*[herd.chat("main", str(i)) for i in range(3)])
    spilled = [r for r in results if r.fallback_from == "main"]
    assert spilled and all(r.alias == "spare" for r in spilled)
    assert any(r.alias == "main" for r in results)  # the first, at low load, was not moved
    await herd.aclose()


async def test_critical_degrades_to_the_smaller_model() -> None:
    herd = sched_herd(
        {
            "max_concurrency": 1,
            "max_queue": 2,
            "queue_timeout_s": 5,
            "shed_priority": -100,
            "degrade": {"big": "small"},
            "critical": 0.9,
            "actions": {"critical": ["degrade"], "high": []},
        },
        latency=0.1,
        models=("big", "small"),
    )
    results = await asyncio.gather(
        herd.chat("big", "1"), herd.chat("big", "2"), herd.chat("big", "3"), return_exceptions=True
    )
    aliases = [r.alias for r in results if not isinstance(r, BaseException)]
    assert "big" in aliases and "small" in aliases
    await herd.aclose()


async def test_idle_unloads_local_models_after_timeout() -> None:
    herd = sched_herd(
        {"idle_after_s": 0.0, "idle_unload_after_s": 0.05, "cooldown_s": 0.0}, latency=0.0
    )
    await herd.chat("mock", "hi")
    model = herd.get_model("mock")
    assert isinstance(model, MockModel)
    plugin = herd.pm.get_plugin("scheduler-calls")
    assert isinstance(plugin, Scheduler)
    await plugin.tick()
    assert "mock" in herd.loaded_models()  # MockModel is not local: never unloaded
    model.is_local = True
    await asyncio.sleep(0.06)
    await plugin.tick()
    assert plugin.state == "idle"
    assert "mock" not in herd.loaded_models() and model.closed
    await herd.aclose()


async def test_medium_balances_to_the_least_busy_deployment() -> None:
    herd = sched_herd(
        {
            "max_concurrency": 4,
            "queue_timeout_s": 5,
            "actions": {"medium": ["balance"], "high": ["balance"], "critical": []},
        },
        latency=0.1,
        models=("east", "west"),
        fallbacks={"east": ["west"]},
    )
    results = await asyncio.gather(*[herd.chat("east", str(i)) for i in range(4)])
    served = sorted(r.alias for r in results)
    assert served.count("west") >= 1 and served.count("east") >= 1
    assert all(r.fallback_from is None for r in results)  # moved at admission, not by failure
    await herd.aclose()


async def test_cancelled_waiters_leave_the_books_straight() -> None:
    herd = sched_herd(
        {"max_concurrency": 1, "queue_timeout_s": 5, "actions": {"critical": []}}, latency=0.05
    )
    plugin_ready = asyncio.create_task(herd.chat("mock", "first"))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(herd.chat("mock", f"w{i}")) for i in range(3)]
    await asyncio.sleep(0.01)
    for task in waiting[:2]:
        task.cancel()  # e.g. the caller's own timeout
    await plugin_ready
    assert (await waiting[2]).content == "ok"
    for task in waiting[:2]:
        with pytest.raises(asyncio.CancelledError):
            await task
    plugin = herd.pm.get_plugin("scheduler-calls")
    assert isinstance(plugin, Scheduler)
    assert (plugin.in_flight, plugin.queued) == (0, 0)
    assert all(count == 0 for count in plugin.by_alias.values())
    await asyncio.gather(*[herd.chat("mock", f"after{i}") for i in range(3)])
    assert (plugin.in_flight, plugin.queued) == (0, 0)
    await herd.aclose()
