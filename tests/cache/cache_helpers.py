"""Small builders shared by the cache tests."""

from __future__ import annotations

from collections import Counter
from typing import Any

from modelherd import hookimpl
from modelherd.kernel import Herd
from modelherd.plugins.cache import disk as cache_disk
from modelherd.plugins.cache import memory as cache_memory
from modelherd.plugins.cache import redis as cache_redis
from modelherd.testing import MockModel, make_herd
from modelherd.types import Metric


class Metrics:
    """Collects every metric the herd emits."""

    __name__ = "test-metrics"

    def __init__(self) -> None:
        self.seen: list[Metric] = []

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        self.seen.append(metric)

    def per_tier(self, name: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for m in self.seen:
            if m.name == name:
                out[m.attributes["herd.cache.tier"]] += int(m.value)
        return out


def cached_herd(
    model: MockModel | None = None,
    *,
    plugins: dict[str, dict[str, Any]] | None = None,
    extra: tuple[Any, ...] = (),
) -> tuple[Herd, MockModel]:
    """A herd with the cache tier plugins loaded; tables in `plugins` switch tiers on."""
    model = model or MockModel()
    herd = make_herd(
        {"mock": model},
        config={"plugins": plugins or {}},
        plugins=(cache_memory, cache_disk, cache_redis, *extra),
    )
    return herd, model
