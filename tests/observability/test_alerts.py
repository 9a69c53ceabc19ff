"""KPI alerts over sliding windows, the circuit breaker and its fallback, notifiers.

A MockModel slows down, fails and answers badly on a schedule; each alert must fire
exactly once and resolve exactly once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from modelherd import CircuitOpenError, ConfigError, ProviderError, hookimpl
from modelherd.plugins.observability import alerts
from modelherd.plugins.observability.alerts.settings import parse_settings
from modelherd.testing import MockModel, make_herd

WINDOW = 0.4
QUIET = {"eval_interval_s": 3600, "status_file": False, "window_s": WINDOW, "min_calls": 3}


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[Any] = []

    @hookimpl
    def on_alert(self, alert: Any, herd: Any) -> None:
        self.alerts.append(alert)

    def events(self, kpi: str, scope: str) -> list[str]:
        return [a.state for a in self.alerts if a.kpi == kpi and a.scope == scope]


def _herd(
    models: dict[str, MockModel], recorder: Recorder, fallbacks: Any = None, **settings: Any
) -> Any:
    return make_herd(
        models,
        config={
            "herd": {"retries": 0},
            "plugins": {"alerts": {**QUIET, **settings}, "resource_monitor": {"enabled": False}},
        },
        plugins=(alerts, recorder),
        fallbacks=fallbacks,
    )


async def _calls(herd: Any, alias: str, n: int, **kwargs: Any) -> list[Any]:
    out = []
    for _ in range(n):
        try:
            out.append(await herd.chat(alias, "hi", cache="no-store", **kwargs))
        except Exception as exc:
            out.append(exc)
    return out


def test_latency_alert_fires_once_and_resolves_once(caplog: pytest.LogCaptureFixture) -> None:
    model = MockModel()
    recorder = Recorder()
    herd = _herd({"mock": model}, recorder, latency_mean_s=0.03)
    caplog.set_level(logging.INFO, logger="modelherd.alerts")

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None
            await _calls(herd, "mock", 4)
            assert hooks.evaluate() == []
            model.latency = 0.1  # the model slows down (window mean >= 0.05 s)
            await _calls(herd, "mock", 4)
            fired = hooks.evaluate()
            assert {(a.kpi, a.scope, a.state) for a in fired} == {
                ("latency_mean", "mock", "firing"),
                ("latency_mean", "*", "firing"),
            }
            await _calls(herd, "mock", 2)
            assert hooks.evaluate() == []  # still slow: no second notification
            model.latency = 0.0  # recovered
            await anyio.sleep(WINDOW)
            await _calls(herd, "mock", 4)
            resolved = hooks.evaluate()
            assert {(a.kpi, a.scope, a.state) for a in resolved} == {
                ("latency_mean", "mock", "resolved"),
                ("latency_mean", "*", "resolved"),
            }
            assert hooks.evaluate() == []

    anyio.run(main)
    assert recorder.events("latency_mean", "mock") == ["firing", "resolved"]
    assert recorder.events("latency_mean", "*") == ["firing", "resolved"]
    logged = [r.getMessage() for r in caplog.records if r.name == "modelherd.alerts"]
    assert any("[FIRING] latency_mean for 'mock' is" in m and "over the 0.03s" in m for m in logged)
    assert sum("[RESOLVED]" in m for m in logged) == 2


def test_hysteresis_keeps_an_alert_firing_just_under_the_line() -> None:
    from modelherd.plugins.observability.alerts.kpi import KpiEngine

    engine = KpiEngine(
        parse_settings({"latency_mean_s": 1.0, "hysteresis": 0.2, "min_calls": 1}, "x")
    )

    def at(value: float) -> list[str]:
        snap = {"m": {"calls": 10, "latency_mean_s": value}}
        return [a.state for a in engine.evaluate(snap, None, True)]

    assert at(1.1) == ["firing"]
    assert at(0.9) == []  # under the threshold but not under 1.0 * (1 - 0.2)
    assert at(1.2) == []
    assert at(0.79) == ["resolved"]
    assert at(0.9) == []


def test_error_rate_alert_fires_and_resolves_once() -> None:
    model = MockModel()
    recorder = Recorder()
    herd = _herd({"mock": model}, recorder)

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None
            await _calls(herd, "mock", 5)
            model.enqueue(ProviderError("upstream 503"), "ok", ProviderError("upstream 503"))
            await _calls(herd, "mock", 3)
            hooks.evaluate()
            hooks.evaluate()
            await anyio.sleep(WINDOW)
            await _calls(herd, "mock", 5)
            hooks.evaluate()

    anyio.run(main)
    assert recorder.events("error_rate", "mock") == ["firing", "resolved"]
    assert recorder.events("error_rate", "*") == ["firing", "resolved"]
    firing = next(a for a in recorder.alerts if a.scope == "mock")
    assert firing.value == pytest.approx(2 / 8)


def test_breaker_opens_fallback_answers_then_probe_closes_it() -> None:
    primary, backup = MockModel(default="from primary"), MockModel(default="from backup")
    primary.enqueue(*[ProviderError("primary down")] * 4)
    recorder = Recorder()
    herd = _herd(
        {"primary": primary, "backup": backup},
        recorder,
        fallbacks={"primary": ["backup"]},
        breaker_failures=3,
        breaker_cooldown_s=1.0,
    )

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None and hooks.breaker is not None
            answers = await _calls(herd, "primary", 3)
            assert [a.content for a in answers] == ["from backup"] * 3
            assert hooks.breaker.state("primary") == "open"
            # open: the sick model is not even asked; the fallback answers
            more = await _calls(herd, "primary", 3)
            assert [a.content for a in more] == ["from backup"] * 3
            assert all(a.fallback_from == "primary" for a in more)
            assert len(primary.history) == 3
            await anyio.sleep(1.05)
            # half-open: one probe goes to primary, fails (4th queued error): open again
            probe = await _calls(herd, "primary", 1)
            assert probe[0].content == "from backup" and len(primary.history) == 4
            assert hooks.breaker.state("primary") == "open"
            await anyio.sleep(1.05)
            healed = await _calls(herd, "primary", 2)  # probe succeeds: closed
            assert [a.content for a in healed] == ["from primary"] * 2
            assert hooks.breaker.state("primary") == "closed"

    anyio.run(main)
    assert recorder.events("circuit_open", "primary") == ["firing", "resolved"]
    opened = recorder.alerts[0]
    assert "opened: 3 failures in 30s, last ProviderError" in opened.message


def test_a_latency_alert_sends_calls_to_the_fallback() -> None:
    slow, backup = MockModel(default="slow answer"), MockModel(default="backup answer")
    recorder = Recorder()
    herd = _herd(
        {"slow": slow, "backup": backup},
        recorder,
        fallbacks={"slow": ["backup"]},
        latency_mean_s=0.03,
        breaker_cooldown_s=0.5,
    )

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None and hooks.breaker is not None
            slow.latency = 0.05
            await _calls(herd, "slow", 3)
            hooks.evaluate()  # latency alert fires -> recovery opens the circuit
            assert hooks.breaker.state("slow") == "open"
            answers = await _calls(herd, "slow", 3)
            assert [a.content for a in answers] == ["backup answer"] * 3
            assert len(slow.history) == 3
            slow.latency = 0.0
            await anyio.sleep(WINDOW + 0.15)
            hooks.evaluate()  # no calls reached 'slow' in the window: resolved
            healed = await _calls(herd, "slow", 2)  # cooldown over: the probe closes it
            assert [a.content for a in healed] == ["slow answer"] * 2

    anyio.run(main)
    assert recorder.events("latency_mean", "slow") == ["firing", "resolved"]
    assert recorder.events("circuit_open", "slow") == ["firing", "resolved"]
    opened = next(a for a in recorder.alerts if a.kpi == "circuit_open")
    assert "opened: latency_mean alert: latency_mean for 'slow' is" in opened.message


def test_open_circuit_without_fallback_says_what_to_do() -> None:
    model = MockModel()
    model.enqueue(ProviderError("down"), ProviderError("down"))
    herd = _herd({"solo": model}, Recorder(), breaker_failures=2, breaker_needs_fallback=False)

    async def main() -> None:
        async with herd:
            await _calls(herd, "solo", 2)
            with pytest.raises(CircuitOpenError) as err:
                await herd.chat("solo", "hi")
            message = str(err.value)
            assert message.startswith("circuit for 'solo' is open after 2 failures in 30s")
            assert "add fallbacks = [...] to [models.solo]" in message
            assert err.value.retry_after is not None and err.value.retry_after > 0

    anyio.run(main)


def test_by_default_only_aliases_with_fallbacks_get_a_breaker() -> None:
    model = MockModel()
    model.enqueue(*[ProviderError("down")] * 6)
    herd = _herd({"solo": model}, Recorder(), breaker_failures=2)

    async def main() -> None:
        async with herd:
            errors = await _calls(herd, "solo", 6)
            # the caller keeps seeing the model's own error, never CircuitOpenError
            assert all(isinstance(e, ProviderError) for e in errors)
            assert len(model.history) == 6

    anyio.run(main)


def test_quality_alert_from_validation() -> None:
    model = MockModel(default='{"action": "BUY"}')
    recorder = Recorder()
    herd = _herd({"mock": model}, recorder)

    def valid(response: Any) -> bool:
        return "action" in json.loads(response.content)

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None
            await _calls(herd, "mock", 4, validate=valid)
            model.enqueue("not json", '{"other": 1}')
            await _calls(herd, "mock", 3, validate=valid)
            hooks.evaluate()
            status = hooks.status()
            assert status["models"]["mock"]["quality"] == pytest.approx(5 / 7)
            await anyio.sleep(WINDOW)
            await _calls(herd, "mock", 4, validate=valid)
            hooks.evaluate()

    anyio.run(main)
    assert recorder.events("quality", "mock") == ["firing", "resolved"]
    messages = [a.message for a in recorder.alerts]
    assert "quality for 'mock' is 71.4%, under the 95.0% threshold" in messages


def test_throughput_floor_is_judged_over_a_full_window() -> None:
    recorder = Recorder()
    herd = _herd({"mock": MockModel()}, recorder, throughput_min_rps=1000)

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None
            await _calls(herd, "mock", 3)
            assert hooks.evaluate() == []  # the first window is not over yet
            await anyio.sleep(WINDOW)
            await _calls(herd, "mock", 3)
            hooks.evaluate()

    anyio.run(main)
    assert recorder.events("throughput", "*") == ["firing"]


def test_resource_kpis_from_the_sampler() -> None:
    class Sample:
        latest: dict[str, Any] = {"cpu_percent": 95.0, "memory_percent": 40.0, "gpu_percent": None}

    recorder = Recorder()
    herd = _herd({"mock": MockModel()}, recorder)

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None
            hooks.resources = Sample()
            hooks.evaluate()
            Sample.latest = {"cpu_percent": 75.0}
            hooks.evaluate()  # inside hysteresis: still firing
            Sample.latest = {"cpu_percent": 30.0}
            hooks.evaluate()

    anyio.run(main)
    assert recorder.events("cpu", "host") == ["firing", "resolved"]
    assert recorder.events("memory", "host") == []


def test_background_thread_evaluates_on_its_own() -> None:
    model = MockModel(latency=0.05)
    recorder = Recorder()
    herd = _herd({"mock": model}, recorder, latency_mean_s=0.01, eval_interval_s=0.05)

    async def main() -> None:
        async with herd:
            await _calls(herd, "mock", 3)
            deadline = time.monotonic() + 3
            while not recorder.alerts and time.monotonic() < deadline:
                await anyio.sleep(0.02)

    anyio.run(main)
    assert ("latency_mean", "mock", "firing") in {
        (a.kpi, a.scope, a.state) for a in recorder.alerts
    }


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [200, 500])
def test_webhook_notifier(status: int, caplog: pytest.LogCaptureFixture) -> None:
    _Hook.received = []
    _Hook.status = status
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook?token=s3cret"
    model = MockModel()
    model.enqueue(*[ProviderError("down")] * 2)
    herd = _herd(
        {"mock": model},
        Recorder(),
        breaker_failures=2,
        webhook_url=url,
        breaker_needs_fallback=False,
    )
    caplog.set_level(logging.WARNING, logger="modelherd.alerts")

    async def main() -> None:
        async with herd:
            await _calls(herd, "mock", 2)
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None and hooks.notifier.webhook is not None
            hooks.notifier.webhook.flush()

    try:
        anyio.run(main)
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Hook.received) == 1
    payload = _Hook.received[0]
    assert payload["source"] == "modelherd"
    assert payload["alert"]["kpi"] == "circuit_open" and payload["alert"]["state"] == "firing"
    failures = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    if status == 200:
        assert not failures
    else:
        assert failures == [
            "alert webhook to 127.0.0.1 failed: HTTPStatusError — check "
            "[plugins.alerts] webhook_url"
        ]
        assert "s3cret" not in failures[0]


def test_alerts_off_registers_no_call_hooks() -> None:
    herd = make_herd(config={"plugins": {"alerts": {"enabled": False}}}, plugins=(alerts,))

    async def main() -> None:
        async with herd:
            await herd.chat("mock", "hi")
            assert alerts.alert_hooks(herd) is None
            assert not herd.hook.before_call.get_hookimpls()

    anyio.run(main)


def test_false_switches_a_kpi_off() -> None:
    from modelherd.plugins.observability.alerts.kpi import build_rules

    kpis = {r.kpi for r in build_rules(parse_settings({"cpu_percent": False}, "x"))}
    assert "cpu" not in kpis and "memory" in kpis and "throughput" not in kpis


def test_bad_alert_settings_say_what_to_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"latency_mean": 1}, "plugins.toml")
    assert str(err.value) == (
        "plugins.toml: [plugins.alerts] latency_mean: unknown key — "
        "did you mean 'latency_mean_s'? (see docs/observability.md)"
    )
    with pytest.raises(ConfigError) as err:
        parse_settings({"error_rate": 5}, "plugins.toml")
    assert str(err.value).startswith(
        "plugins.toml: [plugins.alerts] error_rate: Input should be less than or equal to 1"
    )


def test_a_broken_on_alert_plugin_does_not_stop_the_others() -> None:
    class Broken:
        @hookimpl
        def on_alert(self, alert: Any, herd: Any) -> None:
            raise RuntimeError("notifier bug")

    recorder = Recorder()
    model = MockModel()
    model.enqueue(*[ProviderError("down")] * 2)
    herd = _herd({"mock": model}, recorder, breaker_failures=2, breaker_needs_fallback=False)
    herd.register_plugin(Broken(), name="broken-notifier")

    async def main() -> None:
        async with herd:
            errors = await _calls(herd, "mock", 2)
            assert all(isinstance(e, ProviderError) for e in errors)

    anyio.run(main)
    assert recorder.events("circuit_open", "mock") == ["firing"]


@pytest.mark.parametrize("status", [429, 529])
def test_rate_limits_and_overload_never_open_the_circuit(status: int) -> None:
    """429 / 529 carry Retry-After and say nothing about the model's health: ten of them
    leave the circuit closed (and the model's error_rate untouched); five 5xx open it."""
    from modelherd.plugins.providers.errors import status_error

    def throttled() -> Exception:
        return status_error(
            status, "slow down", provider="X", alias="primary", model="m", key_var=None
        )

    primary, backup = MockModel(default="from primary"), MockModel(default="from backup")
    primary.enqueue(*[throttled() for _ in range(10)])
    herd = _herd(
        {"primary": primary, "backup": backup},
        Recorder(),
        fallbacks={"primary": ["backup"]},
        breaker_failures=3,
    )

    async def main() -> None:
        async with herd:
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None and hooks.breaker is not None
            answers = await _calls(herd, "primary", 10)
            assert [a.content for a in answers] == ["from backup"] * 10
            assert hooks.breaker.state("primary") == "closed"
            assert len(primary.history) == 10  # every call still tried the primary first
            assert hooks.stats.snapshot()["primary"]["errors"] == 0
            primary.enqueue(*[ProviderError("down")] * 3)
            await _calls(herd, "primary", 3)
            assert hooks.breaker.state("primary") == "open"

    anyio.run(main)
