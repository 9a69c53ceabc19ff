"""provide_model, startup / shutdown and cache-tier registration through the kernel."""

from __future__ import annotations

from typing import Any

import anyio
from modelherd import CacheTier, ChatResponse, Herd, ModelSpec, hookimpl
from modelherd.testing import MockModel, make_herd


def test_provide_model_lets_a_plugin_build_models_its_own_way() -> None:
    custom = MockModel(default="built by the plugin")

    class Factory:
        __name__ = "factory"

        @hookimpl(tryfirst=True)
        def provide_model(self, spec: ModelSpec, herd: Herd) -> Any:
            return custom if spec.alias == "special" else None

    herd = make_herd(
        {"m": MockModel()},
        plugins=(Factory(),),
        config={"models": {"special": {"provider": "mock", "model": "x"}}},
    )
    assert herd.chat_sync("special", "hi").content == "built by the plugin"
    assert herd.chat_sync("m", "hi").content == "ok"


def test_startup_and_shutdown_open_and_close_async_resources() -> None:
    events: list[str] = []

    class Pool:
        __name__ = "pool"

        @hookimpl
        def startup(self, herd: Herd) -> Any:
            async def open_pool() -> None:
                await anyio.sleep(0)
                events.append("opened")

            return open_pool()

        @hookimpl
        def shutdown(self, herd: Herd) -> Any:
            async def close_pool() -> None:
                events.append("closed")

            return close_pool()

    herd = make_herd({"m": MockModel()}, plugins=(Pool(),))

    async def go() -> None:
        async with herd:
            await herd.chat("m", "a")
            await herd.chat("m", "b")

    anyio.run(go)
    assert events == ["opened", "closed"]


class DictTier(CacheTier):
    def __init__(self, name: str, order: int) -> None:
        self.name = name  # type: ignore[misc]
        self.order = order  # type: ignore[misc]
        self.data: dict[str, ChatResponse] = {}

    async def get(self, key: str) -> ChatResponse | None:
        return self.data.get(key)

    async def set(self, key: str, response: ChatResponse, ttl: float | None) -> None:
        self.data[key] = response

    async def clear(self) -> int:
        count = len(self.data)
        self.data.clear()
        return count


def test_cache_tiers_answer_fastest_first_and_promote() -> None:
    fast, slow = DictTier("fast", 1), DictTier("slow", 2)

    class Tiers:
        __name__ = "tiers"

        @hookimpl
        def register_cache_tiers(self, register: Any, herd: Herd) -> None:
            register(slow)
            register(fast)

    model = MockModel()
    herd = make_herd({"m": model}, plugins=(Tiers(),))
    first = herd.chat_sync("m", "q", temperature=0)
    assert first.cache_tier is None and len(fast.data) == len(slow.data) == 1
    fast.data.clear()
    second = herd.chat_sync("m", "q", temperature=0)
    assert second.cache_tier == "slow" and len(fast.data) == 1  # promoted
    third = herd.chat_sync("m", "q", temperature=0)
    assert third.cache_tier == "fast" and len(model.history) == 1


def test_no_store_and_tenants_keep_entries_apart() -> None:
    tier = DictTier("t", 1)

    class Tiers:
        __name__ = "tiers"

        @hookimpl
        def register_cache_tiers(self, register: Any, herd: Herd) -> None:
            register(tier)

    model = MockModel()
    herd = make_herd({"m": model}, plugins=(Tiers(),))
    herd.chat_sync("m", "q", temperature=0, cache="no-store")
    assert tier.data == {}
    herd.chat_sync("m", "q", temperature=0, tenant="alice")
    assert herd.chat_sync("m", "q", temperature=0, tenant="bob").cache_tier is None
    assert herd.chat_sync("m", "q", temperature=0, tenant="alice").cache_tier == "t"
    model.enqueue("")  # an empty answer is never stored
    herd.chat_sync("m", "empty?", temperature=0)
    assert len(tier.data) == 2  # alice and bob only
