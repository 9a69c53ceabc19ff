"""Traces and metrics exported to a real OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from modelherd import ConfigError, ProviderError
from modelherd.plugins.observability import otel
from modelherd.plugins.observability.otel.settings import parse_settings, resolve
from modelherd.testing import MockModel, make_herd
from otlp_receiver import OtlpReceiver, attributes

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.proto")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rec:
        yield rec


def _herd(
    receiver: OtlpReceiver, models: dict[str, MockModel] | None = None, **settings: Any
) -> Any:
    table = {"enabled": True, "endpoint": receiver.endpoint, "export_interval_s": 60, **settings}
    return make_herd(
        models or {"mock": MockModel()},
        config={"plugins": {"otel": table}},
        plugins=(otel,),
        fallbacks={"flaky": ["mock"]},
    )


def _by_name(spans: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def test_chat_span_has_genai_attributes_and_no_content(receiver: OtlpReceiver) -> None:
    herd = _herd(receiver)

    async def main() -> None:
        async with herd:
            await herd.chat(
                "mock", "what is the secret plan", temperature=0.3, max_tokens=64, tenant="acme"
            )
            assert otel.force_flush(herd)

    anyio.run(main)
    spans = receiver.wait_spans(1)
    assert [s.name for s in spans] == ["chat mock-1"]
    attrs = attributes(spans[0])
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "mock"
    assert attrs["gen_ai.request.model"] == "mock-1"
    assert attrs["gen_ai.request.temperature"] == pytest.approx(0.3)
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.response.model"] == "mock-1"
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == 1
    assert attrs["herd.tenant"] == "acme"
    assert attrs["herd.cache.hit"] is False
    assert spans[0].kind == 3  # SPAN_KIND_CLIENT
    # content is opt-in: neither the prompt nor the answer travel by default
    raw = spans[0].SerializeToString()
    assert b"secret plan" not in raw
    assert "gen_ai.input.messages" not in attrs


def test_content_only_when_opted_in(receiver: OtlpReceiver) -> None:
    herd = _herd(receiver, capture_content=True)

    async def main() -> None:
        async with herd:
            await herd.chat("mock", "what is the secret plan")
            otel.force_flush(herd)

    anyio.run(main)
    attrs = attributes(receiver.wait_spans(1)[0])
    assert "secret plan" in attrs["gen_ai.input.messages"]
    assert '"ok"' in attrs["gen_ai.output.messages"]


def test_retries_fallback_and_error_type(receiver: OtlpReceiver) -> None:
    flaky = MockModel()
    flaky.spec = flaky.spec.model_copy(update={"model": "flaky-1"})
    flaky.enqueue(ProviderError("boom 1"), ProviderError("boom 2"), ProviderError("boom 3"))
    broken = MockModel()
    broken.enqueue(*[ProviderError("down")] * 3)
    herd = _herd(receiver, {"flaky": flaky, "mock": MockModel(), "broken": broken})

    async def main() -> None:
        async with herd:
            response = await herd.chat("flaky", "hi")
            assert response.fallback_from == "flaky"
            with pytest.raises(ProviderError):
                await herd.chat("broken", "hi")
            otel.force_flush(herd)

    anyio.run(main)
    spans = _by_name(receiver.wait_spans(2))
    ok = spans["chat flaky-1"][0]
    events = [e.name for e in ok.events]
    assert events.count("herd.attempt_failed") == 3
    assert events.count("herd.retry") == 2
    assert "herd.fallback" in events
    attrs = attributes(ok)
    assert attrs["herd.fallback_from"] == "flaky"
    assert attrs["herd.attempts"] == 4
    failed = spans["chat mock-1"][0]
    assert attributes(failed)["error.type"] == "ProviderError"
    assert failed.status.code == 2  # STATUS_CODE_ERROR


def test_cache_hit_is_a_span_attribute(receiver: OtlpReceiver) -> None:
    from modelherd.cache import CacheTier
    from modelherd.kernel import hookimpl

    class DictTier(CacheTier):
        name = "memory"
        order = 0

        def __init__(self) -> None:
            super().__init__()
            self.data: dict[str, Any] = {}

        async def get(self, key: str) -> Any:
            return self.data.get(key)

        async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
            self.data[key] = value

        async def clear(self) -> None:
            self.data.clear()

        async def stats(self) -> dict[str, Any]:
            return {}

        async def aclose(self) -> None:
            pass

    class TierPlugin:
        @hookimpl
        def register_cache_tiers(self, register: Any, herd: Any) -> None:
            register(DictTier())

    herd = _herd(receiver)
    herd.register_plugin(TierPlugin(), name="tier")

    async def main() -> None:
        async with herd:
            await herd.chat("mock", "same", temperature=0)
            second = await herd.chat("mock", "same", temperature=0)
            assert second.cache_tier is not None
            otel.force_flush(herd)

    anyio.run(main)
    spans = receiver.wait_spans(2)
    hits = [attributes(s) for s in spans if attributes(s)["herd.cache.hit"]]
    assert len(hits) == 1 and hits[0]["herd.cache.tier"] == "memory"


def test_swarm_tree_through_a_task_group(receiver: OtlpReceiver) -> None:
    members = {name: MockModel(latency=0.01) for name in ("m1", "m2", "m3")}
    for name, model in members.items():
        model.spec = model.spec.model_copy(update={"model": f"{name}-model"})
    herd = _herd(receiver, members)

    async def main() -> None:
        async with otel.agent_span(herd, "swarm", **{"herd.members": 3}) as span:
            assert span is not None
            async with anyio.create_task_group() as tg:
                for alias in members:
                    tg.start_soon(herd.chat, alias, "vote")
        # a call outside the agent span is a root span
        await herd.chat("m1", "alone")
        otel.force_flush(herd)
        await herd.aclose()

    anyio.run(main)
    spans = receiver.wait_spans(5)
    names = _by_name(spans)
    root = names["invoke_agent swarm"][0]
    assert attributes(root)["gen_ai.operation.name"] == "invoke_agent"
    assert attributes(root)["gen_ai.agent.name"] == "swarm"
    assert root.parent_span_id == b""
    children = [s for s in spans if s.parent_span_id == root.span_id]
    assert sorted(s.name for s in children) == ["chat m1-model", "chat m2-model", "chat m3-model"]
    assert all(s.trace_id == root.trace_id for s in children)
    alone = [s for s in names["chat m1-model"] if s.parent_span_id == b""]
    assert len(alone) == 1 and alone[0].trace_id != root.trace_id


def test_agent_span_is_a_noop_when_tracing_is_off() -> None:
    herd = make_herd(plugins=(otel,))

    async def main() -> None:
        async with otel.agent_span(herd, "swarm") as span:
            assert span is None
            await herd.chat("mock", "hi")
        assert herd.pm.get_plugin(otel.HOOKS_NAME) is None
        assert not herd.wants_metrics
        assert not otel.force_flush(herd)
        await herd.aclose()

    anyio.run(main)


def test_metrics_reach_the_receiver(receiver: OtlpReceiver) -> None:
    herd = _herd(receiver)

    async def main() -> None:
        async with herd:
            for _ in range(3):
                await herd.chat("mock", "count me")
            otel.force_flush(herd)

    anyio.run(main)
    metrics = receiver.metrics()
    duration = metrics["gen_ai.client.operation.duration"][-1]
    assert duration.unit == "s"
    point = duration.histogram.data_points[0]
    assert point.count == 3
    assert attributes(point)["gen_ai.request.model"] == "mock-1"
    tokens = metrics["gen_ai.client.token.usage"][-1].histogram.data_points
    assert {attributes(p)["gen_ai.token.type"] for p in tokens} == {"input", "output"}
    lookups = metrics["herd.cache.lookups"][-1].sum.data_points
    assert sum(p.as_int for p in lookups) == 3
    requests = metrics["herd.requests"][-1].sum.data_points
    assert sum(p.as_int for p in requests) == 3
    assert "herd.inflight" in metrics


def test_resource_gauges_are_exported(receiver: OtlpReceiver) -> None:
    from modelherd.plugins.resources import monitor as resource_monitor

    table = {"enabled": True, "endpoint": receiver.endpoint, "export_interval_s": 60}
    herd = make_herd(
        config={"plugins": {"otel": table, "resource_monitor": {"interval_s": 60}}},
        plugins=(otel, resource_monitor),
    )

    async def main() -> None:
        async with herd:
            otel.force_flush(herd)

    anyio.run(main)
    metrics = receiver.metrics()
    cpu = metrics["system.cpu.utilization"][-1].gauge.data_points[0].as_double
    assert 0 <= cpu <= 64  # a share of one CPU, x cores at most
    assert metrics["process.memory.usage"][-1].gauge.data_points[0].as_double > 0


def test_collector_down_is_a_warning_not_an_error(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.status = 503
    herd = _herd(receiver, export_timeout_s=1)
    caplog.set_level(logging.WARNING)

    async def main() -> None:
        async with herd:
            response = await herd.chat("mock", "still answered")
            assert response.content == "ok"
            otel.force_flush(herd, timeout_s=2)

    anyio.run(main)
    ours = [r for r in caplog.records if r.name == "modelherd.otel"]
    assert ours and "is the collector running?" in ours[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_env_enables_tracing() -> None:
    cfg = resolve(parse_settings({}, "x"), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert cfg.enabled and cfg.traces_endpoint == "http://c:4318/v1/traces"
    assert not resolve(parse_settings({}, "x"), {}).enabled
    off = resolve(parse_settings({"enabled": True}, "x"), {"OTEL_SDK_DISABLED": "true"})
    assert not off.enabled


def test_bad_settings_say_what_to_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"endpont": "x"}, "plugins.toml")
    assert str(err.value).startswith("plugins.toml: [plugins.otel] endpont: unknown key")
    assert "endpoint" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_settings({"export_interval_s": 0}, "plugins.toml")
    assert "[plugins.otel] export_interval_s:" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve(parse_settings({}, "x"), {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert "use http/protobuf" in str(err.value)


def test_stream_gets_one_span(receiver: OtlpReceiver) -> None:
    herd = _herd(receiver)

    async def main() -> None:
        async with herd:
            chunks = [item async for item in herd.stream("mock", "tell me", max_tokens=8)]
            assert chunks[-1].content == "ok"
            otel.force_flush(herd)

    anyio.run(main)
    (span,) = receiver.wait_spans(1)
    attrs = attributes(span)
    assert span.name == "chat mock-1" and attrs["gen_ai.request.max_tokens"] == 8
    assert attrs["gen_ai.usage.output_tokens"] == 1


def test_installed_plugin_switched_on_by_the_environment(receiver: OtlpReceiver) -> None:
    """The real path: entry-point loading, enabled only by OTEL_EXPORTER_OTLP_ENDPOINT."""
    from modelherd import Herd
    from modelherd.config import HerdConfig
    from modelherd.testing import MockProvider

    provider = MockProvider()
    provider.add("m", MockModel())
    config = HerdConfig.model_validate(
        {
            "models": {"m": {"provider": "mock", "model": "m-1"}},
            "plugins": {"alerts": {"status_file": False}},
        }
    )
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "bot"}
    herd = Herd(config, env=env, plugins=(provider,))

    async def main() -> None:
        async with herd:
            assert otel.tracing_enabled(herd)
            await herd.chat("m", "hi")
            otel.force_flush(herd)

    anyio.run(main)
    spans = receiver.wait_spans(1)
    assert [s.name for s in spans] == ["chat m-1"]
    resource = attributes(receiver.trace_requests[0].resource_spans[0].resource)
    assert resource["service.name"] == "bot"


def test_a_call_left_open_does_not_swallow_the_next(receiver: OtlpReceiver) -> None:
    """A call that ended without after_call/on_error (a bug elsewhere) is dropped, and the
    next call to the same alias gets its own span rather than becoming a 'retry'."""
    herd = _herd(receiver)

    async def main() -> None:
        async with herd:
            hooks = herd.pm.get_plugin(otel.HOOKS_NAME)
            leaked = herd.build_request("mock", "lost")
            hooks.before_call(request=leaked, herd=herd)  # never finished
            await herd.chat("mock", "next")
            otel.force_flush(herd)

    anyio.run(main)
    (span,) = receiver.wait_spans(1)
    assert [e.name for e in span.events] == []
    assert attributes(span)["herd.attempts"] == 1


def test_missing_sdk_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from modelherd import MissingDependencyError
    from modelherd.plugins.observability.otel.export import Exporters

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)  # import now fails
    cfg = resolve(parse_settings({"enabled": True}, "x"), {})
    with pytest.raises(MissingDependencyError) as err:
        Exporters(cfg)
    assert str(err.value) == (
        "tracing ([plugins.otel] or OTEL_EXPORTER_OTLP_ENDPOINT) needs the 'opentelemetry-sdk' "
        'package — install it with: pip install "modelherd[otel]"'
    )


def test_the_real_swarm_shows_as_one_tree(receiver: OtlpReceiver) -> None:
    """The swarm agent (anyio task group, watchdog, early stop) traces itself as a tree."""
    swarm = pytest.importorskip("modelherd.agents.swarm")
    members = {f"m{i}": MockModel(default='{"answer": "yes"}') for i in range(3)}
    herd = _herd(receiver, members)
    herd.register_plugin(swarm, name="swarm-agent")

    async def main() -> None:
        async with herd:
            agent = herd.agent(
                "swarm",
                members=list(members),
                samples=1,
                save=False,
                labels=["yes", "no"],
                early_stop=False,
            )
            # no agent_span here: the swarm opens its own parent span
            result = await agent.ask("Is the sky blue?")
            assert result.consensus is not None
            otel.force_flush(herd)

    anyio.run(main)
    spans = receiver.wait_spans(4)
    by_id = {s.span_id: s for s in spans}
    (root,) = [s for s in spans if s.parent_span_id == b""]
    assert root.name == "invoke_agent swarm"

    def under_root(span: Any) -> bool:
        while span.parent_span_id:
            span = by_id[span.parent_span_id]
        return span is root

    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == 3 and all(under_root(s) for s in chats)
    assert all(s.parent_span_id == root.span_id for s in chats)  # members are direct children
    assert [s.name for s in spans].count("invoke_agent swarm") == 1
    assert {attributes(s)["gen_ai.agent.name"] for s in chats} == {"swarm"}


def _price(symbol: str) -> float:
    """The last price of a symbol."""
    return 97000.0


def test_tool_loop_is_execute_tool_spans_under_the_agent_span(receiver: OtlpReceiver) -> None:
    from modelherd import ToolCall

    model = MockModel().enqueue(
        [ToolCall(id="c1", name="_price", arguments={"symbol": "BTC-secret"})], "done"
    )
    herd = _herd(receiver, {"mock": model})

    async def main() -> None:
        async with otel.agent_span(herd, "desk"):
            await herd.run_tools("mock", "price?", tools=[_price])
        otel.force_flush(herd)
        await herd.aclose()

    anyio.run(main)
    spans = receiver.wait_spans(4)
    names = _by_name(spans)
    root = names["invoke_agent desk"][0]
    (tool,) = names["execute_tool _price"]
    attrs = attributes(tool)
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["gen_ai.tool.name"] == "_price"
    assert attrs["gen_ai.tool.call.id"] == "c1"
    assert attrs["gen_ai.tool.type"] == "function"
    assert attrs["gen_ai.tool.description"] == "The last price of a symbol."
    assert tool.kind == 1  # SPAN_KIND_INTERNAL
    assert tool.parent_span_id == root.span_id
    assert len(names["chat mock-1"]) == 2
    # arguments and results are content: not recorded unless capture_content is on
    assert b"BTC-secret" not in tool.SerializeToString()


def test_tool_arguments_and_results_with_capture_content(receiver: OtlpReceiver) -> None:
    from modelherd import ToolCall

    model = MockModel().enqueue(
        [ToolCall(id="c1", name="_price", arguments={"symbol": "BTC"})], "done"
    )
    herd = _herd(receiver, {"mock": model}, capture_content=True)

    async def main() -> None:
        await herd.run_tools("mock", "price?", tools=[_price])
        otel.force_flush(herd)
        await herd.aclose()

    anyio.run(main)
    spans = receiver.wait_spans(3)
    (tool,) = _by_name(spans)["execute_tool _price"]
    attrs = attributes(tool)
    assert attrs["gen_ai.tool.call.arguments"] == '{"symbol": "BTC"}'
    assert attrs["gen_ai.tool.call.result"] == "97000.0"


def test_embeddings_are_spans_of_their_own(receiver: OtlpReceiver) -> None:
    herd = _herd(receiver)

    async def main() -> None:
        result = await herd.embed("mock", ["one text", "two"], tenant="acme")
        assert len(result.vectors) == 2
        otel.force_flush(herd)
        await herd.aclose()

    anyio.run(main)
    (span,) = receiver.wait_spans(1)
    attrs = attributes(span)
    assert span.name == "embeddings mock-1"
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.usage.input_tokens"] == 3
    assert attrs["herd.embeddings.count"] == 2 and attrs["herd.tenant"] == "acme"
    assert span.kind == 3  # SPAN_KIND_CLIENT
