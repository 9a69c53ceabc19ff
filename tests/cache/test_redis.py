"""The L3 Redis tier against a real redis-server: sharing, TTL, auth, outages, encryption."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cache_helpers import cached_herd
from cache_redis_server import RedisServer, needs_redis, start_redis, start_redis_tls
from modelherd.errors import ConfigError, PluginLoadError
from modelherd.testing import MockModel

pytestmark = [pytest.mark.redis, needs_redis]

KEY = "T1mM0fQm2yXH3Rzw3b1bSg8u8Qv5m7P9l8b7v2n4k1c="


#: op_timeout for tests that are not about timeouts: a TLS or AUTH handshake on a
#: loaded 2-core CI box can take longer than the 0.2 s the outage tests use
SLOW_OK = 2.0


def redis_only(url: str, **extra: Any) -> dict[str, dict[str, Any]]:
    return {
        "cache_memory": {"enabled": False},
        "cache_redis": {"url": url, "op_timeout": 0.2, "reprobe_s": 0.2, **extra},
    }


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "modelherd.cache.redis" and r.levelno == logging.WARNING
    ]


def test_shared_between_herds_with_ttl(redis_server: RedisServer) -> None:
    herd1, _ = cached_herd(MockModel(default="shared"), plugins=redis_only(redis_server.url))
    herd2, model2 = cached_herd(MockModel(default="other"), plugins=redis_only(redis_server.url))

    async def go() -> list[tuple[str, str | None]]:
        async with herd1, herd2:
            await herd1.chat("mock", "q")
            a = await herd2.chat("mock", "q")
            await herd1.chat("mock", "short", cache_ttl=0.1)
            b = await herd2.chat("mock", "short")
            await asyncio.sleep(0.25)
            c = await herd2.chat("mock", "short")
            return [(a.content, a.cache_tier), (b.content, b.cache_tier), (c.content, c.cache_tier)]

    assert asyncio.run(go()) == [("shared", "redis"), ("shared", "redis"), ("other", None)]
    assert len(model2.history) == 1


def test_killed_mid_run_calls_go_on_with_one_warning(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    model = MockModel()
    model.enqueue(*[lambda r: f"answer to {r.messages[-1].content}"] * 500)
    herd, _ = cached_herd(model, plugins=redis_only(redis_server.url))

    async def go() -> tuple[list[str], float, str]:
        async with herd:
            for i in range(5):
                await herd.chat("mock", f"q{i}")
            redis_server.stop()
            answers = []
            start = time.perf_counter()
            for i in range(30):
                r = await herd.chat("mock", f"q{i % 10}")
                answers.append(r.content)
            took = time.perf_counter() - start
            tier = herd.cache.tiers[0] if herd.cache else None
            return answers, took, getattr(tier, "state", "")

    answers, took, state = asyncio.run(go())
    assert answers == [f"answer to q{i % 10}" for i in range(30)]
    assert took < 2.0  # the breaker opened: no per-call timeout after the first failures
    assert state in ("open", "half-open")
    warnings = redis_warnings(caplog)
    assert len(warnings) == 1
    assert "steps aside and calls go on without it" in warnings[0]


def test_a_stalled_redis_is_bounded_and_re_probed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    herd, _model = cached_herd(plugins=redis_only(redis_server.url))

    async def go() -> tuple[list[float], str | None]:
        async with herd:
            await herd.chat("mock", "warm")
            redis_server.pause()  # SIGSTOP: connections hang, nothing is refused
            times = []
            try:
                for i in range(6):
                    start = time.perf_counter()
                    r = await herd.chat("mock", f"stalled {i}")
                    assert r.content == "ok"
                    times.append(time.perf_counter() - start)
            finally:
                redis_server.resume()
            await asyncio.sleep(0.5)  # past reprobe_s: the next call probes and closes
            await herd.chat("mock", "after")
            await herd.chat("mock", "after 2")
            again = await herd.chat("mock", "warm")
            return times, again.cache_tier

    times, tier = asyncio.run(go())
    # each operation is bounded by op_timeout (0.2 s); get + set at most, then the breaker
    assert max(times) < 1.0, times
    assert sum(times[2:]) < 0.2, times
    assert tier == "redis"
    assert len(redis_warnings(caplog)) == 1


def test_auth_with_password_from_the_environment(tmp_path: Path) -> None:
    server = start_redis(tmp_path, "--requirepass", "s3cret-pass")
    try:
        plugins = redis_only(server.url, password_env="REDIS_PASS", op_timeout=SLOW_OK)
        herd, _ = cached_herd(MockModel(default="authed"), plugins=plugins)
        herd.env = {"REDIS_PASS": "s3cret-pass"}
        herd2, model2 = cached_herd(plugins=plugins)
        herd2.env = {"REDIS_PASS": "s3cret-pass"}

        async def go() -> str | None:
            async with herd, herd2:
                await herd.chat("mock", "q")
                tier = herd.cache.tiers[0] if herd.cache else None
                assert "s3cret" not in repr(tier)
                return (await herd2.chat("mock", "q")).cache_tier

        assert asyncio.run(go()) == "redis"
        assert model2.history == []
    finally:
        server.stop()


def test_wrong_password_steps_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = start_redis(tmp_path, "--requirepass", "right")
    try:
        herd, _model = cached_herd(plugins=redis_only(server.url, password_env="REDIS_PASS"))
        herd.env = {"REDIS_PASS": "wrong-one"}

        async def go() -> list[str]:
            async with herd:
                return [(await herd.chat("mock", "q")).content for _ in range(5)]

        assert asyncio.run(go()) == ["ok"] * 5
        warnings = redis_warnings(caplog)
        assert len(warnings) == 1 and "AuthenticationError" in warnings[0]
        assert "wrong-one" not in warnings[0]
    finally:
        server.stop()


def test_encrypted_values_and_clear_only_our_prefix(redis_server: RedisServer) -> None:
    import redis as redis_sync

    plugins = redis_only(redis_server.url, encrypt_key_env="HERD_CACHE_KEY")
    herd, _ = cached_herd(MockModel(default="classified answer"), plugins=plugins)
    herd.env = {"HERD_CACHE_KEY": KEY}
    client = redis_sync.Redis.from_url(redis_server.url)
    client.set("someone-else:key", b"keep me")

    async def go() -> dict[str, int]:
        async with herd:
            await herd.chat("mock", "q1")
            await herd.chat("mock", "q2")
            values = [client.get(k) for k in client.keys("herd:*")]
            assert len(values) == 2
            assert all(b"classified" not in v for v in values)
            assert herd.cache is not None
            return await herd.cache.clear("redis")

    assert asyncio.run(go()) == {"redis": 2}
    assert client.get("someone-else:key") == b"keep me"
    assert client.keys("herd:*") == []
    client.close()


def test_password_in_url_is_refused_without_echoing_it() -> None:
    herd, _ = cached_herd(plugins=redis_only("redis://user:hunter2@127.0.0.1:1/0"))
    with pytest.raises(ConfigError) as info:  # strict or not: a config error
        asyncio.run(herd.start())
    message = str(info.value)
    assert "hunter2" not in message
    assert "[plugins.cache_redis] url: " in message and "set password_env" in message


def test_missing_password_env_is_one_line() -> None:
    herd, _ = cached_herd(plugins=redis_only("redis://127.0.0.1:1/0", password_env="REDIS_PASS"))
    herd.env = {}
    with pytest.raises(
        ConfigError,
        match="password_env: the environment variable REDIS_PASS is not set — export it",
    ):
        asyncio.run(herd.start())


def test_plugin_load_imports_no_redis() -> None:
    import subprocess

    code = (
        "import sys; from modelherd.plugins.cache import redis, disk, memory, residency; "
        "print('redis' in sys.modules, 'cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


def test_tls_rediss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, ca = start_redis_tls(tmp_path)
    try:
        assert server.url.startswith("rediss://")
        plugins = redis_only(server.url, ssl_ca_certs=str(ca), op_timeout=SLOW_OK)
        herd1, _ = cached_herd(MockModel(default="over tls"), plugins=plugins)
        herd2, model2 = cached_herd(plugins=plugins)
        # without our CA the server's certificate is not trusted: the tier steps aside
        untrusting, model3 = cached_herd(
            MockModel(default="uncached"), plugins=redis_only(server.url, op_timeout=SLOW_OK)
        )

        async def go() -> list[tuple[str, str | None]]:
            async with herd1, herd2, untrusting:
                await herd1.chat("mock", "q")
                a = await herd2.chat("mock", "q")
                b = await untrusting.chat("mock", "q")
                c = await untrusting.chat("mock", "q")
                return [
                    (a.content, a.cache_tier),
                    (b.content, b.cache_tier),
                    (c.content, c.cache_tier),
                ]

        assert asyncio.run(go()) == [("over tls", "redis"), ("uncached", None), ("uncached", None)]
        assert model2.history == [] and len(model3.history) == 2
        warnings = redis_warnings(caplog)
        assert len(warnings) == 1 and "steps aside" in warnings[0]
    finally:
        server.stop()


def test_redis_hit_promotes_with_its_remaining_ttl(redis_server: RedisServer) -> None:
    plugins = {"cache_redis": {"url": redis_server.url}}  # memory on: the promotion target
    writer, _ = cached_herd(plugins=plugins)
    reader, model = cached_herd(plugins=plugins)

    async def go() -> list[str | None]:
        async with writer, reader:
            await writer.chat("mock", "q", cache_ttl=0.3)
            tiers = [
                (await reader.chat("mock", "q")).cache_tier,
                (await reader.chat("mock", "q")).cache_tier,
            ]
            await asyncio.sleep(0.4)
            tiers.append((await reader.chat("mock", "q")).cache_tier)
            return tiers

    assert asyncio.run(go()) == ["redis", "memory", None]
    assert len(model.history) == 1


def test_missing_redis_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    herd, _ = cached_herd(plugins=redis_only("redis://127.0.0.1:1/0"))
    herd.strict = True
    with pytest.raises(PluginLoadError, match=r'pip install "modelherd\[redis\]"'):
        asyncio.run(herd.start())


def test_a_cancelled_probe_does_not_wedge_the_breaker(redis_server: RedisServer) -> None:
    from modelherd.plugins.cache.redis import RedisSettings, RedisTier
    from modelherd.types import ChatResponse

    tier = RedisTier(
        RedisSettings(url=redis_server.url, op_timeout=0.3, reprobe_s=0.05, failure_threshold=1)
    )
    answer = ChatResponse(content="x", model="m", provider="p")

    async def go() -> str | None:
        await tier.set("k", answer, None)
        redis_server.pause()
        try:
            await tier.get("k")  # times out: the breaker opens
            assert tier.state == "open"
            await asyncio.sleep(0.1)  # half-open: the next call probes …
            probe = asyncio.create_task(tier.get("k"))
            await asyncio.sleep(0.05)
            probe.cancel()  # … and is cancelled mid-probe
            with pytest.raises(asyncio.CancelledError):
                await probe
        finally:
            redis_server.resume()
        await asyncio.sleep(0.1)
        hit = await tier.get("k")  # a new probe runs and closes the breaker
        await tier.aclose()
        return hit.content if hit else None

    assert asyncio.run(go()) == "x"
    assert tier.state == "closed"
