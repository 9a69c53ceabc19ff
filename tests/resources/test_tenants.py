"""Tenant quotas: tiers, each limit's error, isolation, and Redis-shared limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from modelherd import Herd
from modelherd.errors import ConfigError, QuotaExceededError
from modelherd.plugins.resources import tenants as tenants_plugin
from modelherd.plugins.resources.tenants import runtime as tenants_core
from modelherd.plugins.resources.tenants.runtime import DEFAULT_TIERS, build_tenants, build_tiers
from modelherd.plugins.resources.tenants.settings import load_tenants_config
from modelherd.testing import MockModel, make_herd
from modelherd.types import ChatRequest

pytestmark = pytest.mark.anyio


def herd_for(
    tenants: Mapping[str, Mapping[str, object]],
    *,
    tiers: Mapping[str, object] | None = None,
    settings: Mapping[str, object] | None = None,
    latency: float = 0.0,
    models: tuple[str, ...] = ("mock",),
) -> Herd:
    config: dict[str, object] = {"tenants": tenants}
    if tiers:
        config["tiers"] = tiers
    if settings:
        config["plugins"] = {"tenants": settings}
    return make_herd(
        {name: MockModel(latency=latency) for name in models},
        config=config,
        plugins=(tenants_plugin,),
    )


async def test_no_tenants_no_per_call_hooks() -> None:
    herd = make_herd({"mock": MockModel()}, plugins=(tenants_plugin,))
    await herd.start()
    assert herd.pm.get_plugin("tenants-calls") is None
    assert not herd._has["acquire_admission"] and not herd._has["after_call"]
    assert (await herd.chat("mock", "hi", tenant="anyone")).content == "ok"


def test_default_tiers_follow_the_runbook() -> None:
    tiers = build_tiers({}, "test")
    assert list(tiers) == ["basic", "standard", "premium", "dedicated"]
    assert [tiers[t].memory_share for t in tiers] == [0.25, 0.5, 1.0, 1.0]  # 4/8/16 GB/exclusive
    prio = [tiers[t].priority for t in tiers]
    assert prio == sorted(prio) and len(set(prio)) == 4
    assert tiers["dedicated"].requests_per_minute is None  # exclusive: no quota
    for name in ("basic", "standard", "premium"):
        limits = tiers[name]
        assert limits.max_concurrency and limits.requests_per_minute and limits.daily_tokens
    assert set(DEFAULT_TIERS) == set(tiers)
    custom = build_tiers({"basic": {"daily_tokens": 7}, "gold": {"priority": 25}}, "t")
    assert custom["basic"].daily_tokens == 7 and custom["basic"].max_concurrency == 4
    assert custom["gold"].priority == 25


def test_config_errors_are_one_line_naming_the_key() -> None:
    tiers = build_tiers({}, "p.toml")
    with pytest.raises(
        ConfigError,
        match=r"p.toml: \[tenants.bob\] tier: unknown tier 'gold' — "
        r"use one of basic, standard, premium, dedicated",
    ):
        build_tenants({"bob": {"tier": "gold"}}, tiers, "p.toml")
    with pytest.raises(
        ConfigError,
        match=r"p.toml: \[tenants.bob\] requests_per_mnute: unknown key — did you mean "
        r"'requests_per_minute'\? \(see docs/resources.md\)",
    ):
        build_tenants({"bob": {"requests_per_mnute": 5}}, tiers, "p.toml")
    with pytest.raises(
        ConfigError,
        match=r"p.toml: \[tiers.basic\] memory_share: Input should "
        r"be less than or equal to 1",
    ):
        build_tiers({"basic": {"memory_share": 2}}, "p.toml")


async def test_requests_per_minute_rejects_with_retry_after() -> None:
    herd = herd_for(
        {
            "alice": {"tier": "basic", "requests_per_minute": 120, "burst_s": 1},
            "carol": {"tier": "premium"},
        }
    )
    await herd.chat("mock", "hi", tenant="alice")
    await herd.chat("mock", "hi", tenant="alice")  # burst: 2 requests (1 s at 2/s)
    with pytest.raises(QuotaExceededError) as info:
        await herd.chat("mock", "hi", tenant="alice")
    err = info.value
    assert 0.0 < err.retry_after <= 0.5
    assert str(err).startswith(
        "tenant 'alice' (basic) is over its requests_per_minute limit (120/min) — retry in "
    )
    # nothing else is affected: another tenant goes through
    for _ in range(5):
        await herd.chat("mock", "hi", tenant="carol")
    await asyncio.sleep(err.retry_after or 0)
    await herd.chat("mock", "hi", tenant="alice")


async def test_tokens_per_minute_charges_usage_after_the_call() -> None:
    herd = herd_for(
        {"t": {"tier": "basic", "tokens_per_minute": 60, "requests_per_minute": 6000, "burst_s": 1}}
    )
    model = herd.get_model("mock")
    assert isinstance(model, MockModel)
    model.enqueue("word " * 20)  # 1 input + 20 output tokens, bucket holds 1 token/s x 1 s
    await herd.chat("mock", "hi", tenant="t")
    with pytest.raises(
        QuotaExceededError, match=r"over its tokens_per_minute limit \(60/min\)"
    ) as info:
        await herd.chat("mock", "hi", tenant="t")
    assert info.value.retry_after == pytest.approx(20, abs=1.5)  # 20 tokens of debt at 1/s


async def test_daily_budget_names_the_reset() -> None:
    herd = herd_for({"d": {"tier": "standard", "daily_tokens": 5}})
    model = herd.get_model("mock")
    assert isinstance(model, MockModel)
    model.enqueue("a b c d e f")
    await herd.chat("mock", "hi", tenant="d")
    with pytest.raises(QuotaExceededError) as info:
        await herd.chat("mock", "hi", tenant="d")
    assert "over its daily_tokens limit (7 of 5 tokens used today, resets at 00:00 UTC)" in str(
        info.value
    )
    assert 0 < info.value.retry_after <= 86400


async def test_max_concurrency_waits_then_refuses() -> None:
    herd = herd_for(
        {
            "c": {
                "tier": "basic",
                "max_concurrency": 2,
                "max_wait_s": 0.15,
                "requests_per_minute": 60000,
            }
        },
        latency=0.1,
    )
    started = time.perf_counter()
    results = await asyncio.gather(
        *[herd.chat("mock", "hi", tenant="c") for _ in range(4)], return_exceptions=True
    )
    assert all(not isinstance(r, BaseException) for r in results)
    # two waves of two: at least 0.2 s (the limit held), well under 0.4 s (not serialised);
    # a generous upper bound, since busy CI machines stretch sleeps
    assert 0.19 <= time.perf_counter() - started < 0.38
    results = await asyncio.gather(
        *[herd.chat("mock", "hi", tenant="c") for _ in range(6)], return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, QuotaExceededError)]
    assert len(refused) == 2  # the third wave would end after 0.3 s > 0.15 s of waiting
    assert "over its max_concurrency limit (2 calls running, none finished within 0.15s)" in str(
        refused[0]
    )


async def test_allowed_models_unknown_tenant_and_priority() -> None:
    herd = herd_for({"b": {"tier": "basic", "allowed_models": ["small"]}}, models=("small", "big"))
    seen: list[int] = []

    def record(request: ChatRequest) -> str:
        seen.append(request.priority)
        return "ok"

    model = herd.get_model("small")
    assert isinstance(model, MockModel)
    model.enqueue(record)
    await herd.chat("small", "hi", tenant="b", priority=3)
    assert seen == [3]  # basic adds 0
    with pytest.raises(
        QuotaExceededError,
        match=r"over its allowed_models limit \('big' is not "
        r"in \['small'\]\) — it does not reset",
    ):
        await herd.chat("big", "hi", tenant="b")
    with pytest.raises(ConfigError, match=r"unknown tenant 'zed' — add \[tenants.zed\] tier = "):
        await herd.chat("small", "hi", tenant="zed")
    lenient = herd_for({"b": {"tier": "basic"}}, settings={"unknown_tenant": "premium"})
    model2 = lenient.get_model("mock")
    assert isinstance(model2, MockModel)
    model2.enqueue(record)
    await lenient.chat("mock", "hi", tenant="zed")
    assert seen[-1] == DEFAULT_TIERS["premium"]["priority"]


async def test_memory_share_refuses_models_bigger_than_the_share(tmp_path: object) -> None:
    herd = herd_for({"b": {"tier": "basic"}}, settings={"local_memory_gb": 1})
    plugin = tenants_core.Tenants(herd, load_tenants_config(herd.config))
    plugin.model_bytes["local"] = int(0.3 * 1024**3)  # > 0.25 x 1 GiB
    with pytest.raises(
        QuotaExceededError,
        match=r"over its memory_share limit \('local' needs "
        r"0.30 GiB, the tenant's share is 0.25",
    ):
        await plugin._check_memory(plugin.tenants["b"], "local")
    plugin.model_bytes["small"] = int(0.2 * 1024**3)
    await plugin._check_memory(plugin.tenants["b"], "small")


# ---- Redis: one limit across processes ----------------------------------------------


async def test_two_herds_sharing_redis_get_one_limit(redis_url: str) -> None:
    cfg = {
        "shared": {
            "tier": "basic",
            "requests_per_minute": 600,
            "burst_s": 1,
            "max_concurrency": 100,
        }
    }
    settings = {"redis_url": redis_url, "key_prefix": f"test:{time.monotonic_ns()}"}
    herds = [herd_for(cfg, settings=settings) for _ in range(2)]
    for herd in herds:
        await herd.start()  # connect to Redis before the clock starts
    ok = 0
    started = time.monotonic()
    end = started + 1.0

    async def flood(herd: Herd) -> None:
        nonlocal ok
        while time.monotonic() < end:
            try:
                await herd.chat("mock", "hi", tenant="shared")
                ok += 1
            except QuotaExceededError as exc:
                await asyncio.sleep(min(exc.retry_after or 0.01, end - time.monotonic(), 0.05))

    await asyncio.gather(*(flood(h) for h in herds for _ in range(3)))
    allowed = 10 + 10 * 1.0  # burst 10 + 10/s for the 1 s window, shared by both herds
    assert ok == pytest.approx(allowed, abs=2), ok  # one herd alone would not exceed it either;
    # without the shared bucket the two herds together would get about twice as many
    for herd in herds:
        await herd.aclose()


async def test_concurrency_slots_and_daily_budget_shared_in_redis(redis_url: str) -> None:
    cfg = {
        "s": {
            "tier": "basic",
            "max_concurrency": 2,
            "max_wait_s": 0.05,
            "requests_per_minute": 60000,
            "daily_tokens": 1000,
        }
    }
    settings = {"redis_url": redis_url, "key_prefix": f"test:{time.monotonic_ns()}"}
    a, b = (
        herd_for(cfg, settings=settings, latency=0.2),
        herd_for(cfg, settings=settings, latency=0.2),
    )
    results = await asyncio.gather(
        *[h.chat("mock", "hi", tenant="s") for h in (a, b, a, b)], return_exceptions=True
    )
    assert sum(isinstance(r, QuotaExceededError) for r in results) == 2
    plugin = a.pm.get_plugin("tenants-calls")
    assert plugin.redis is not None
    assert await plugin.redis.day_used("s") == 4  # 2 calls x (1 in + 1 out), counted in Redis
    for herd in (a, b):
        await herd.aclose()


async def test_unreachable_redis_falls_back_to_local_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    herd = herd_for(
        {"x": {"tier": "basic", "requests_per_minute": 120, "burst_s": 1}},
        settings={"redis_url": "redis://:s3cret@127.0.0.1:1/0"},
    )
    with caplog.at_level(logging.WARNING, logger="modelherd.tenants"):
        await herd.chat("mock", "hi", tenant="x")
        await herd.chat("mock", "hi", tenant="x")
        with pytest.raises(QuotaExceededError):
            await herd.chat("mock", "hi", tenant="x")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert warnings[0].startswith("tenants: Redis at redis://127.0.0.1:1/0 is unreachable")
    assert "enforcing quotas per process" in warnings[0]
    assert "s3cret" not in warnings[0]
    await herd.aclose()


def test_daily_counter_resets_at_utc_midnight(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelherd.plugins.resources.tenants import token_bucket

    counter = token_bucket.DailyCounter()
    counter.add(40)
    assert counter.current() == 40
    later = counter.reset_at + 1
    monkeypatch.setattr(token_bucket.time, "time", lambda: later)
    assert counter.current() == 0
    assert counter.reset_at > later


def test_herd_tenants_command(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner
    from modelherd.plugins.resources.tenants.cli import make_tenants_command

    config = tmp_path / "plugins.toml"
    config.write_text(
        '[tenants.alice]\ntier = "premium"\nrequests_per_minute = 1200\n'
        "[tiers.basic]\ndaily_tokens = 0\n"
    )
    result = CliRunner().invoke(make_tenants_command(), ["--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["alice"]["tier"] == "premium" and rows["alice"]["requests_per_minute"] == 1200
    assert rows["alice"]["tokens_per_minute"] == 1_000_000
    assert rows["basic"]["daily_tokens"] is None  # 0 switched it off
    table = CliRunner().invoke(make_tenants_command(), ["--config", str(config)])
    assert table.exit_code == 0 and "alice" in table.output and "dedicated" in table.output
    config.write_text('[tenants.bob]\ntier = "gold"\n')
    bad = CliRunner().invoke(make_tenants_command(), ["--config", str(config)])
    assert bad.exit_code == 2
    assert "[tenants.bob] tier: unknown tier 'gold'" in bad.output


async def test_missing_redis_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    herd = herd_for({"x": {"tier": "basic"}}, settings={"redis_url": "redis://127.0.0.1:1/0"})
    with caplog.at_level(logging.WARNING, logger="modelherd.tenants"):
        await herd.chat("mock", "hi", tenant="x")
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(
        "tenants: redis_url is set but the redis package is missing — pip install "
        '"modelherd[redis]"; enforcing quotas per process (replicas = 1: '
    )
    await herd.aclose()


async def test_cancelled_slot_waiter_does_not_leak_a_slot() -> None:
    herd = herd_for(
        {
            "c": {
                "tier": "basic",
                "max_concurrency": 1,
                "max_wait_s": 5,
                "requests_per_minute": 60000,
            }
        },
        latency=0.05,
    )
    first = asyncio.create_task(herd.chat("mock", "1", tenant="c"))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(herd.chat("mock", "2", tenant="c"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    plugin = herd.pm.get_plugin("tenants-calls")
    slots = plugin.tenants["c"].slots
    assert (slots.held, len(slots.waiters)) == (0, 0)
    await asyncio.gather(*[herd.chat("mock", str(i), tenant="c") for i in range(3)])
    assert slots.held == 0
    await herd.aclose()
