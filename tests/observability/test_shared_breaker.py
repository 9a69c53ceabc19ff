"""The circuit breaker shared by replicas through a real redis-server.

Two Herds (as two gateway replicas would be) share one redis-server through
`[plugins.serve] redis_url`, and call one loopback OpenAI-compatible upstream that
counts its hits per model: replica A's failures open the breaker, replica B then fails
over without calling the failing deployment; after the cool-down exactly one replica
probes; with Redis gone the local breaker still works and says it is not shared.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from modelherd import ConfigError, Herd
from modelherd.config import HerdConfig
from modelherd.plugins.observability import alerts
from modelherd.plugins.observability.alerts.runtime import AlertHooks
from modelherd.plugins.observability.alerts.shared import SharedBreaker
from modelherd.plugins.providers import openai as openai_provider
from providers.loopback import LoopbackServer, Recorder

sys.path.insert(0, str(Path(__file__).parents[1] / "cache"))
from cache_redis_server import REDIS_BIN, RedisServer, start_redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]
HERD = str(Path(sys.executable).with_name("herd"))
PRIMARY, BACKUP = "primary-model", "backup-model"


class Upstream:
    """What the deployments do: `sick` models answer 500, `delay` slows a model."""

    def __init__(self) -> None:
        self.sick: set[str] = set()
        self.delay: dict[str, float] = {}
        #: per model, when each request arrived (time.monotonic)
        self.hits: dict[str, list[float]] = {PRIMARY: [], BACKUP: []}

    def count(self, model: str) -> int:
        return len(self.hits.get(model, []))

    def make_app(self, recorder: Recorder) -> web.Application:
        async def completions(request: web.Request) -> web.Response:
            body = await request.json()
            model = body["model"]
            self.hits.setdefault(model, []).append(time.monotonic())
            if model in self.delay:
                await asyncio.sleep(self.delay[model])
            if model in self.sick:
                error = {"message": "upstream is down", "type": "server_error", "code": None}
                return web.json_response({"error": error}, status=500)
            message = {"role": "assistant", "content": f"{model}: ok"}
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
            )

        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        return app


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed — sudo apt-get install redis-server")
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, LoopbackServer]]:
    state = Upstream()
    server = LoopbackServer(state.make_app).start()
    try:
        yield state, server
    finally:
        server.stop()


@pytest.fixture
def replicas(
    upstream: tuple[Upstream, LoopbackServer], redis_server: RedisServer
) -> Iterator[Callable[..., Herd]]:
    """`replica(**alerts_settings)`: a Herd sharing the test's Redis and upstream."""
    made: list[Herd] = []
    url = upstream[1].url

    def replica(
        redis_url: str | None = None,
        start: bool = True,
        ready: bool = True,
        serve: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> Herd:
        alert_settings = {
            "status_file": False,
            "eval_interval_s": 3600,
            "recover_on": [],
            "breaker_failures": 3,
            "breaker_cooldown_s": 0.6,
            **settings,
        }
        config = HerdConfig.model_validate(
            {
                "herd": {"default_model": "primary", "retries": 0, "timeout": 5},
                "models": {
                    "primary": {
                        "provider": "openai_compatible",
                        "base_url": f"{url}/v1",
                        "model": PRIMARY,
                        "fallbacks": ["backup"],
                    },
                    "backup": {
                        "provider": "openai_compatible",
                        "base_url": f"{url}/v1",
                        "model": BACKUP,
                    },
                },
                "plugins": {
                    "serve": {"redis_url": redis_url or redis_server.url, **(serve or {})},
                    "alerts": alert_settings,
                },
            }
        )
        config.source = "test config"
        herd = Herd(
            config, env=env or {}, load_entry_points=False, plugins=(openai_provider, alerts)
        )
        if start:
            made.append(herd)
            herd.chat_sync("backup", "warm up")  # starts the herd: its breaker subscribes
            if ready:
                wait_for(lambda: shared(herd).ok, "the shared breaker to connect")
        return herd

    yield replica
    for herd in made:
        herd.close()


def hooks(herd: Herd) -> AlertHooks:
    found = alerts.alert_hooks(herd)
    assert found is not None
    return found


def shared(herd: Herd) -> SharedBreaker:
    found = hooks(herd).shared
    assert found is not None
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def state(herd: Herd, alias: str = "primary") -> str:
    breaker = hooks(herd).breaker
    assert breaker is not None
    return breaker.state(alias)


def open_on(herd: Herd, up: Upstream, n: int = 3) -> None:
    """Make the primary sick and fail `n` calls on `herd` (each answered by the backup)."""
    up.sick.add(PRIMARY)
    for i in range(n):
        answer = herd.chat_sync("primary", f"q{i}")
        assert answer.alias == "backup" and answer.content == f"{BACKUP}: ok"
    assert state(herd) == "open"


def test_breaker_opened_by_a_spares_b(
    replicas: Callable[..., Herd],
    upstream: tuple[Upstream, LoopbackServer],
    redis_server: RedisServer,
) -> None:
    up = upstream[0]
    a, b = replicas(), replicas()
    open_on(a, up)
    assert up.count(PRIMARY) == 3
    wait_for(lambda: state(b) == "open", "replica B to learn of A's open circuit")
    for i in range(5):
        answer = b.chat_sync("primary", f"b{i}")
        assert answer.alias == "backup"
    assert up.count(PRIMARY) == 3  # B never called the failing deployment
    late = replicas()  # a replica started after the open reads it when it connects
    assert state(late) == "open"
    assert late.chat_sync("primary", "late").alias == "backup"
    assert up.count(PRIMARY) == 3
    circuit = hooks(b).breaker_status()["circuits"]["primary"]
    assert circuit["by"] == shared(a).replica
    assert "3 failures in 30s" in circuit["why"] and "ProviderError" in circuit["why"]

    # the record outlives no replica: cool-down + the probe lease, then Redis drops it
    import redis

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    key = shared(a).keys("primary")[0]
    assert key.startswith("herd:serve:breaker:primary@")
    record = client.hgetall(key)
    assert record["state"] == "open" and record["by"] == shared(a).replica
    assert 0 < client.pttl(key) <= (0.6 + shared(a).lease_s) * 1000
    client.close()


def test_failures_on_both_replicas_add_up(
    replicas: Callable[..., Herd], upstream: tuple[Upstream, LoopbackServer]
) -> None:
    """Two failures on A and one on B: neither reached 3 alone, together they did."""
    up = upstream[0]
    a, b = replicas(breaker_window_s=30), replicas(breaker_window_s=30)
    up.sick.add(PRIMARY)
    a.chat_sync("primary", "1")
    a.chat_sync("primary", "2")
    time.sleep(0.2)  # A's failures reach Redis first
    b.chat_sync("primary", "3")
    wait_for(lambda: state(a) == "open" and state(b) == "open", "both circuits to open")
    assert "across replicas" in hooks(a).breaker_status()["circuits"]["primary"]["why"]
    before = up.count(PRIMARY)
    a.chat_sync("primary", "4")
    b.chat_sync("primary", "5")
    assert up.count(PRIMARY) == before == 3


@pytest.mark.parametrize(
    "wait_s",
    [0.65, 1.5],
    ids=["after-cooldown", "record-expired-unprobed"],  # cool-down 0.6 s + lease 0.6 s
)
def test_half_open_probe_has_one_winner(
    replicas: Callable[..., Herd], upstream: tuple[Upstream, LoopbackServer], wait_s: float
) -> None:
    up = upstream[0]
    a, b = replicas(), replicas()
    open_on(a, up)
    wait_for(lambda: state(b) == "open", "replica B to learn of the open circuit")
    up.sick.discard(PRIMARY)  # healthy again, but slow: the probe takes 0.8 s
    up.delay[PRIMARY] = 0.8
    time.sleep(wait_s)  # past the cool-down on both replicas
    answered: dict[str, list[tuple[float, str]]] = {"a": [], "b": []}

    def hammer(name: str, herd: Herd) -> None:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            started = time.monotonic()
            answer = herd.chat_sync("primary", name)
            answered[name].append((started, answer.alias))
            time.sleep(0.01)

    threads = [threading.Thread(target=hammer, args=(n, h)) for n, h in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    hits = up.hits[PRIMARY][3:]  # after the three failures that opened the circuit
    assert hits, "nobody probed"
    probe = hits[0]
    # no other call reached the deployment while the probe was out
    assert all(t >= probe + 0.75 for t in hits[1:]), [round(t - probe, 3) for t in hits]
    # the replica that lost the probe kept failing over meanwhile (it did not wait)
    during = [
        alias
        for calls in answered.values()
        for started, alias in calls
        if probe < started < probe + 0.7
    ]
    assert during.count("backup") >= 5, during
    assert state(a) == "closed" and state(b) == "closed"  # the probe's success closed both
    up.delay.clear()
    assert a.chat_sync("primary", "x").alias == b.chat_sync("primary", "y").alias == "primary"


def test_a_dead_prober_holds_the_others_back_one_lease_at_most(
    replicas: Callable[..., Herd],
    upstream: tuple[Upstream, LoopbackServer],
    redis_server: RedisServer,
) -> None:
    """A replica that took the probe lock and died: the others keep failing over until
    its lease runs out (0.6 s here), then one of them probes and closes the circuit."""
    import redis

    up = upstream[0]
    a, b = replicas(), replicas()
    open_on(a, up)
    wait_for(lambda: state(b) == "open", "replica B to learn of the open circuit")
    up.sick.discard(PRIMARY)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    probe_key = shared(a).keys("primary")[1]
    time.sleep(0.65)  # the cool-down is over: a ghost replica takes the lock, then dies
    assert client.set(probe_key, "ghost:1:dead", nx=True, px=600)
    taken = time.monotonic()
    answers = []
    while time.monotonic() < taken + 2.0 and state(b) != "closed":
        answers.append((time.monotonic() - taken, b.chat_sync("primary", "b").alias))
        time.sleep(0.01)
    assert state(b) == "closed", answers
    first_primary = next(t for t, alias in answers if alias == "primary")
    assert 0.5 <= first_primary <= 1.6, answers  # not before the lease ran out, soon after
    assert up.count(PRIMARY) == 4  # the three failures, then B's one probe
    wait_for(lambda: state(a) == "closed", "A to hear that B's probe closed it")
    client.close()


def test_redis_password_comes_from_the_env_and_never_shows(
    replicas: Callable[..., Herd], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    secret = "s3cret-redis-pw-42"
    (tmp_path / "pw").mkdir()
    server = start_redis(tmp_path / "pw", "--requirepass", secret)
    try:
        serve = {"redis_password_env": "HERD_TEST_REDIS_PW"}
        good = replicas(server.url, serve=serve, env={"HERD_TEST_REDIS_PW": secret})
        assert shared(good).ok
        bad = replicas(server.url, ready=False, serve=serve, env={"HERD_TEST_REDIS_PW": "nope"})
        wait_for(lambda: shared(bad).error != "not connected yet", "the failed AUTH")
        status = hooks(bad).breaker_status()["shared"]
        assert status["ok"] is False and "Error" in status["error"]
        shown = json.dumps([hooks(good).status(), hooks(bad).status()]) + caplog.text
        assert secret not in shown and "nope" not in status["error"]
    finally:
        server.stop()


def test_redis_down_local_breaker_works_and_says_so(
    replicas: Callable[..., Herd],
    upstream: tuple[Upstream, LoopbackServer],
    redis_server: RedisServer,
) -> None:
    up = upstream[0]
    a = replicas(breaker_cooldown_s=10)
    redis_server.stop()
    wait_for(lambda: not shared(a).ok, "the breaker to notice Redis is gone")
    status = hooks(a).breaker_status()["shared"]
    assert status["ok"] is False and "Error" in status["error"]
    firing = [x for x in hooks(a).active_alerts() if x.kpi == "breaker_shared"]
    assert len(firing) == 1 and "not shared" in firing[0].message
    assert "127.0.0.1" in firing[0].message

    open_on(a, up)  # the local breaker still opens on local evidence
    a.chat_sync("primary", "after")
    assert up.count(PRIMARY) == 3  # and keeps the sick deployment out

    redis_server.restart()  # back: the open circuit decided meanwhile is published
    wait_for(lambda: shared(a).ok, "the breaker to reconnect", timeout=10)
    assert not [x for x in hooks(a).active_alerts() if x.kpi == "breaker_shared"]
    import redis

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    key = shared(a).keys("primary")[0]
    wait_for(lambda: client.hget(key, "by") == shared(a).replica, "the open record")
    client.close()


def test_another_deployment_under_the_same_alias_is_not_tripped(
    replicas: Callable[..., Herd], upstream: tuple[Upstream, LoopbackServer]
) -> None:
    a = replicas()
    b = replicas()
    hooks(b).shared._fps["primary"] = "0" * 12  # as if B's "primary" were another backend
    open_on(a, upstream[0])
    time.sleep(0.3)
    assert state(b) == "closed"


def _config_error(tmp_path: Path, alerts_table: str, serve_table: str = "") -> str:
    config = tmp_path / "plugins.toml"
    config.write_text(
        '[models.m]\nprovider = "mock"\n'
        f"[plugins.alerts]\n{alerts_table}\n[plugins.serve]\n{serve_table}\n"
    )
    done = subprocess.run(
        [HERD, "--config", str(config), "chat", "-m", "m", "hi"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_misconfigured_sharing_is_one_line_exit_2(tmp_path: Path) -> None:
    line = _config_error(tmp_path, "breaker_shared = true")
    assert line == (
        f"error: {tmp_path / 'plugins.toml'}: [plugins.alerts] breaker_shared: true needs the "
        "Redis the replicas share — set redis_url in [plugins.serve] (e.g. "
        '"redis://127.0.0.1:6379/0"), or remove breaker_shared'
    )
    line = _config_error(tmp_path, "breaker_shared = true\nbreaker = false")
    assert "breaker_shared: true, but breaker = false" in line
    assert "remove breaker_shared, or set breaker = true" in line
    line = _config_error(
        tmp_path,
        "",
        'redis_url = "redis://127.0.0.1:1/0"\nredis_password_env = "HERD_TEST_NO_SUCH_VAR"',
    )
    assert "[plugins.serve] redis_password_env: $HERD_TEST_NO_SUCH_VAR is not set" in line
    assert "breaker_shared = false" in line
    line = _config_error(tmp_path, 'breaker_shared = "yes"')
    assert "[plugins.alerts]" in line and "breaker_shared" in line


def test_sharing_off_or_without_redis_is_per_process() -> None:
    from modelherd.testing import make_herd

    for plugins in (
        {"serve": {"redis_url": "redis://127.0.0.1:1/0"}, "alerts": {"breaker_shared": False}},
        {"alerts": {}},
    ):
        herd = make_herd(
            config={"plugins": {**plugins, "resource_monitor": {"enabled": False}}},
            plugins=(alerts,),
        )
        herd.chat_sync("mock", "hi")
        assert hooks(herd).shared is None
        assert hooks(herd).breaker_status()["shared"] == {"mode": "process"}
        herd.close()


def test_config_error_from_library_startup() -> None:
    from modelherd.testing import make_herd

    herd = make_herd(config={"plugins": {"alerts": {"breaker_shared": True}}}, plugins=(alerts,))
    with pytest.raises(ConfigError, match=r"breaker_shared: true needs the Redis"):
        herd.chat_sync("mock", "hi")
    herd.close()


def test_gateway_replica_shows_the_shared_state(
    replicas: Callable[..., Herd],
    upstream: tuple[Upstream, LoopbackServer],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Replica B as a gateway: its /metrics and /readyz show the circuit A opened, and an
    OpenAI client calling B is answered by the fallback without touching the upstream."""
    pytest.importorskip("prometheus_client")
    import httpx
    import openai
    from serve.gateway_server import GatewayServer

    up = upstream[0]
    a = replicas()
    gateway = GatewayServer(replicas(start=False), tmp_path / "keys.json").start()
    try:
        token = gateway.key("alice")
        wait_for(lambda: shared(gateway.herd).ok, "replica B's breaker to connect")
        open_on(a, up)
        wait_for(lambda: state(gateway.herd) == "open", "replica B to learn of the open circuit")
        ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "ready"
        assert body["breaker"]["shared"]["ok"] is True
        assert body["breaker"]["circuits"]["primary"]["state"] == "open"
        assert body["breaker"]["circuits"]["primary"]["by"] == shared(a).replica
        text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
        assert 'herd_breaker_state{model="primary"} 2.0' in text
        assert "herd_breaker_shared 1.0" in text

        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
        answer = client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == f"{BACKUP}: ok"
        assert up.count(PRIMARY) == 3  # B's gateway never called the failing deployment

        redis_server.stop()
        wait_for(lambda: not shared(gateway.herd).ok, "B to notice Redis is gone")
        ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded"
        assert body["breaker"]["shared"]["ok"] is False and body["breaker"]["shared"]["error"]
        text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
        assert "herd_breaker_shared 0.0" in text
    finally:
        gateway.stop()


def test_missing_redis_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from modelherd.testing import make_herd

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    herd = make_herd(
        config={"plugins": {"serve": {"redis_url": "redis://127.0.0.1:1/0"}}}, plugins=(alerts,)
    )
    with pytest.raises(ConfigError) as info:
        herd.chat_sync("mock", "hi")
    assert str(info.value) == (
        "test config: [plugins.alerts] breaker_shared: sharing circuit state through "
        '[plugins.serve] redis_url needs the redis package — pip install "modelherd[redis]", '
        "or set breaker_shared = false"
    )
    herd.close()
