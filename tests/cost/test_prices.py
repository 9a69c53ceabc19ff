"""Per-call cost: genai-prices' bundled data, plugins.toml overrides, local models.

Expected figures are worked out by hand from the vendors' published per-million-token
prices (which genai-prices 0.2.3 carries) and cross-checked against genai-prices' own
`calc_price`.
"""

from __future__ import annotations

from typing import Any

import pytest
from modelherd import hookimpl
from modelherd.errors import ConfigError
from modelherd.plugins import cost as cost_plugin
from modelherd.plugins.cost.prices import PriceBook, rates_from_genai, token_cost
from modelherd.testing import MockModel, make_herd
from modelherd.types import ChatResponse, Metric, ModelSpec, Usage

pytestmark = pytest.mark.anyio


def _response(model: str, provider: str, usage: Usage, **extra: Any) -> ChatResponse:
    return ChatResponse(content="x", model=model, provider=provider, usage=usage, **extra)


def test_openai_gpt5_mini_with_cached_input_by_hand() -> None:
    # $0.25 input, $0.025 cached input, $2 output per million; OpenAI's prompt_tokens
    # include the cached ones: 800 uncached + 200 cached + 500 out
    spec = ModelSpec(alias="mini", provider="openai", model="gpt-5-mini")
    usage = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=200)
    cost = PriceBook().cost(spec, _response("gpt-5-mini", "openai", usage))
    expected = (800 * 0.25 + 200 * 0.025 + 500 * 2.0) / 1e6
    assert cost.amount == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.001205)
    assert cost.currency == "USD"
    assert cost.source == "genai-prices 0.2.3 (openai/gpt-5-mini)"


def test_anthropic_cache_reads_and_writes_priced_as_anthropic_prices_them() -> None:
    # Claude Sonnet 4.5: $3 in, $3.75 cache write, $0.30 cache read, $15 out; Anthropic's
    # input_tokens exclude both cache kinds
    spec = ModelSpec(alias="sonnet", provider="anthropic", model="claude-sonnet-4-5")
    usage = Usage(
        input_tokens=1000, output_tokens=500, cache_read_tokens=2000, cache_creation_tokens=300
    )
    cost = PriceBook().cost(spec, _response("claude-sonnet-4-5-20250929", "anthropic", usage))
    expected = (1000 * 3 + 300 * 3.75 + 2000 * 0.30 + 500 * 15) / 1e6
    assert cost.amount == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.012225)


def test_long_context_tier_applies_to_every_token() -> None:
    # past 200k input tokens Sonnet 4.5 charges $6 in / $22.50 out for the whole request
    spec = ModelSpec(alias="sonnet", provider="anthropic", model="claude-sonnet-4-5")
    usage = Usage(input_tokens=250_000, output_tokens=1000)
    cost = PriceBook().cost(spec, _response("claude-sonnet-4-5", "anthropic", usage))
    assert cost.amount == pytest.approx((250_000 * 6 + 1000 * 22.5) / 1e6)


def test_agrees_with_genai_prices_calc_price() -> None:
    import genai_prices

    for provider, model, usage in (
        ("openai", "gpt-4o", Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=45)),
        ("deepseek", "deepseek-chat", Usage(input_tokens=999, output_tokens=99)),
        ("anthropic", "claude-3-5-haiku-latest", Usage(input_tokens=5000, output_tokens=70)),
    ):
        ours = token_cost(rates_from_genai(provider, model), usage, provider)
        theirs = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
            ),
            model,
            provider_id=provider,
        ).total_price
        assert ours == pytest.approx(float(theirs), rel=1e-12), (provider, model)


def test_reasoning_tokens_are_output_tokens() -> None:
    # OpenAI counts reasoning tokens inside completion_tokens: 300 visible + 700
    # reasoning = 1000 output tokens at the output price, as OpenAI bills them
    spec = ModelSpec(alias="mini", provider="openai", model="gpt-5-mini")
    cost = PriceBook().cost(spec, _response("gpt-5-mini", "openai", Usage(output_tokens=1000)))
    assert cost.amount == pytest.approx(1000 * 2.0 / 1e6)


def test_override_wins_and_is_hand_computable() -> None:
    from modelherd.types import Price

    price = Price(input_per_mtok=0.5, output_per_mtok=1.5, cached_input_per_mtok=0.05)
    spec = ModelSpec(alias="mine", provider="openai", model="gpt-5-mini", price=price)
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000)
    cost = PriceBook().cost(spec, _response("gpt-5-mini", "openai", usage))
    assert cost.amount == pytest.approx((6000 * 0.5 + 4000 * 0.05 + 2000 * 1.5) / 1e6)
    assert cost.source == "plugins.toml [models.mine] price"


def test_local_models_are_free_unless_priced_per_hour() -> None:
    from modelherd.types import Price

    book = PriceBook()
    free = book.cost(
        ModelSpec(alias="local", provider="llamacpp", model="smol"),
        _response("smol", "llamacpp", Usage(input_tokens=100, output_tokens=100)),
    )
    assert (free.amount, free.source) == (0.0, "local")
    gpu = ModelSpec(alias="gpu", provider="ollama", model="q", price=Price(per_hour=3.6))
    hourly = book.cost(gpu, _response("q", "ollama", Usage(), latency_s=2.0))
    assert hourly.amount == pytest.approx(3.6 * 2.0 / 3600)


def test_unknown_cloud_model_is_unknown_not_free() -> None:
    spec = ModelSpec(alias="x", provider="openai", model="no-such-model-9")
    cost = PriceBook().cost(spec, _response("no-such-model-9", "openai", Usage(input_tokens=5)))
    assert cost.amount is None
    assert cost.source == (
        "unknown: genai-prices 0.2.3 has no price for openai/no-such-model-9 — "
        "set [models.<alias>] price"
    )


def test_cache_hit_costs_nothing_and_records_what_it_saved() -> None:
    spec = ModelSpec(alias="mini", provider="openai", model="gpt-5-mini")
    usage = Usage(input_tokens=1000, output_tokens=500)
    cost = PriceBook().cost(spec, _response("gpt-5-mini", "openai", usage, cache_tier="memory"))
    assert cost.amount == 0.0
    assert cost.saved == pytest.approx((1000 * 0.25 + 500 * 2.0) / 1e6)


def test_prices_never_touch_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # the only downloading code in genai-prices is UpdatePrices (httpx2.get): make any
    # use of it fail, then price a call from a fresh snapshot
    import genai_prices.update_prices as updater
    import httpx2
    from genai_prices import data_snapshot

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("genai-prices tried to download prices")

    monkeypatch.setattr(httpx2, "get", refuse)
    monkeypatch.setattr(updater.UpdatePrices, "start", refuse)
    monkeypatch.setattr(updater.UpdatePrices, "fetch", refuse)
    data_snapshot._bundled_snapshot.cache_clear()
    rates = rates_from_genai("openai", "gpt-4o")
    assert rates.known and rates.input == (2.5, ())
    assert data_snapshot._custom_snapshot is None  # nobody installed a fetched snapshot


class _MetricSink:
    """A plugin that keeps every metric the herd emits."""

    def __init__(self, seen: list[Metric]) -> None:
        self.seen = seen

    @hookimpl
    def on_metric(self, metric: Metric, herd: Any) -> None:
        self.seen.append(metric)


async def test_herd_chat_sets_usage_cost_and_emits_the_cost_counter() -> None:
    seen: list[Metric] = []
    sink = _MetricSink(seen)
    herd = make_herd(
        {"m": MockModel()},
        config={
            "models": {
                "m": {
                    "provider": "mock",
                    "model": "mock-1",
                    "price": {"input_per_mtok": 1.0, "output_per_mtok": 10.0},
                }
            }
        },
        plugins=(cost_plugin, sink),
    )
    async with herd:
        response = await herd.chat("m", "one two three", tenant=None, agent="bot")
    assert response.usage.cost is not None
    # 3 words in, 1 word ("ok") out
    assert response.usage.cost.amount == pytest.approx((3 * 1.0 + 1 * 10.0) / 1e6)
    counters = [m for m in seen if m.name == "herd.cost"]
    assert len(counters) == 1
    assert counters[0].value == pytest.approx(13e-6)
    assert counters[0].attributes["herd.agent"] == "bot"
    assert counters[0].attributes["gen_ai.request.model"] == "mock-1"


async def test_free_and_unpriced_calls_share_one_frozen_cost_and_emit_nothing() -> None:
    # a local model is free whatever its tokens, an unpriced model unknown: the plugin
    # learns that once per (alias, model) and every call gets the same immutable Cost;
    # a priced alias in the same herd is still priced call by call
    import pydantic

    seen: list[Metric] = []
    sink = _MetricSink(seen)
    herd = make_herd(
        {"free": MockModel(), "dark": MockModel(), "paid": MockModel()},
        config={
            "models": {
                "free": {"provider": "mock", "model": "m", "price": {}},
                "dark": {"provider": "mock", "model": "m"},
                "paid": {"provider": "mock", "model": "m", "price": {"input_per_mtok": 1.0}},
            }
        },
        plugins=(cost_plugin, sink),
    )
    async with herd:
        free = [await herd.chat("free", f"q {i} " * i) for i in range(1, 4)]
        dark = [await herd.chat("dark", f"q {i} " * i) for i in range(1, 3)]
        paid = [await herd.chat("paid", f"q {i} " * i) for i in range(1, 3)]
    free_costs = [r.usage.cost for r in free]
    assert all(c is free_costs[0] for c in free_costs)
    assert free_costs[0] is not None and free_costs[0].amount == 0.0
    assert dark[0].usage.cost is dark[1].usage.cost
    assert dark[0].usage.cost is not None and dark[0].usage.cost.amount is None
    assert [r.usage.cost.amount for r in paid if r.usage.cost] == pytest.approx([2e-6, 4e-6])
    assert [m.name for m in seen if m.name.startswith("herd.cost")] == ["herd.cost"] * 2
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        free_costs[0].amount = 1.0  # type: ignore[misc]


def test_a_bad_price_key_is_one_line_naming_the_table(tmp_path: Any) -> None:
    from modelherd.config import load_config

    path = tmp_path / "plugins.toml"
    path.write_text('[models.x]\nprovider = "openai"\nmodel = "gpt-4o"\nprice = {input = 1}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message == (
        f"{path}: [models.x] price.input: unknown key — allowed: input_per_mtok, "
        "output_per_mtok, cached_input_per_mtok, cache_write_per_mtok, per_hour, currency "
        "(see docs/cost.md)"
    )
    assert "\n" not in message
