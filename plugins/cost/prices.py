"""Per-call prices: plugins.toml overrides, genai-prices' bundled data, local models.

The order for one alias (first that applies wins):
1. `[models.<alias>] price = {input_per_mtok, output_per_mtok, cached_input_per_mtok,
   cache_write_per_mtok, per_hour, currency}` — self-hosted and unlisted models;
2. genai-prices' data *as installed* (`genai_prices.data`): never fetched at run time
   (we never touch `genai_prices.UpdatePrices`, the only code path that downloads);
3. local providers (the embedded engine, Ollama, an OpenAI-compatible server) cost 0;
4. otherwise the price is unknown (`Cost.amount is None`), never shown as free.

Rates are resolved once per (alias, model) and kept as floats, so pricing a call is a
few multiplications. Tiers follow genai-prices' "cliff" rule: when a request's total
input passes a tier's start, every token of it pays that tier's rate.

Token meaning differs by vendor and is normalised here: OpenAI-style `input_tokens`
include the cached ones (`cache_read_tokens` is a part of them); Anthropic's exclude
both cache reads and cache writes. Reasoning and tool-call tokens are billed as output
and input by every vendor, and the providers already count them there.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from modelherd.types import ChatResponse, Cost, ModelSpec, Price, Usage, trusted

log = logging.getLogger("modelherd.cost")

#: our provider names -> genai-prices provider ids
GENAI_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "deepseek": "deepseek",
    "groq": "groq",
    "xai": "x-ai",
    "openrouter": "openrouter",
    "gemini": "google",
}
#: providers that run on the user's own machines: free unless a price is set
LOCAL_PROVIDERS = frozenset({"llamacpp", "ollama", "openai_compatible"})
#: providers whose input_tokens exclude cache reads and writes
INPUT_EXCLUDES_CACHE = frozenset({"anthropic"})

#: a price per million tokens: the base rate and (start, rate) tiers, ascending
Tiered = tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class Rates:
    """One model's prices, ready to multiply. `known` is False when nobody prices it."""

    source: str
    currency: str = "USD"
    known: bool = True
    input: Tiered = (0.0, ())
    output: Tiered = (0.0, ())
    cache_read: Tiered | None = None
    cache_write: Tiered | None = None
    per_request: float = 0.0
    per_hour: float = 0.0

    @property
    def free(self) -> bool:
        return self.known and not (
            self.input[0]
            or self.output[0]
            or (self.cache_read and self.cache_read[0])
            or (self.cache_write and self.cache_write[0])
            or self.per_request
            or self.per_hour
        )


def _rate(price: Tiered, total_input: int) -> float:
    base, tiers = price
    for start, rate in reversed(tiers):
        if total_input > start:
            return rate
    return base


def token_cost(rates: Rates, usage: Usage, provider: str) -> float:
    """The tokens' part of a call's cost, in `rates.currency`."""
    cache_read = usage.cache_read_tokens
    cache_write = usage.cache_creation_tokens
    if provider in INPUT_EXCLUDES_CACHE:
        total_input = usage.input_tokens + cache_read + cache_write
    else:
        total_input = usage.input_tokens
    uncached = max(total_input - cache_read - cache_write, 0)
    input_rate = _rate(rates.input, total_input)
    read_rate = _rate(rates.cache_read, total_input) if rates.cache_read else input_rate
    write_rate = _rate(rates.cache_write, total_input) if rates.cache_write else input_rate
    per_mtok = (
        uncached * input_rate
        + cache_read * read_rate
        + cache_write * write_rate
        + usage.output_tokens * _rate(rates.output, total_input)
    )
    return per_mtok / 1_000_000 + rates.per_request


def rates_from_override(alias: str, price: Price) -> Rates:
    return Rates(
        source=f"plugins.toml [models.{alias}] price",
        currency=price.currency,
        input=(price.input_per_mtok, ()),
        output=(price.output_per_mtok, ()),
        cache_read=(price.cached_input_per_mtok, ())
        if price.cached_input_per_mtok is not None
        else None,
        cache_write=(price.cache_write_per_mtok, ())
        if price.cache_write_per_mtok is not None
        else None,
        per_hour=price.per_hour,
    )


def _tiered(value: Any) -> Tiered | None:
    if value is None:
        return None
    tiers = getattr(value, "tiers", None)
    if tiers is None:
        return (float(value), ())
    return (float(value.base), tuple((int(t.start), float(t.price)) for t in tiers))


def genai_prices_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("genai-prices")
    except Exception:
        return None


def rates_from_genai(provider_id: str, model: str, when: dt.datetime | None = None) -> Rates:
    """The bundled genai-prices rates for `model` at `provider_id` (no network)."""
    try:
        # data_snapshot reads the data module shipped in the wheel; the package's
        # only downloading code (update_prices.UpdatePrices) is never started here
        from genai_prices import data_snapshot
    except ImportError:
        return Rates(
            source='unknown: genai-prices is not installed — pip install "modelherd[cost]"',
            known=False,
        )
    try:
        _provider, info = data_snapshot.get_snapshot().find_provider_model(
            model, None, provider_id, None
        )
    except LookupError:
        return Rates(
            source=f"unknown: genai-prices {genai_prices_version()} has no price for "
            f"{provider_id}/{model} — set [models.<alias>] price",
            known=False,
        )
    prices = info.get_prices(when or dt.datetime.now(dt.UTC))
    return Rates(
        source=f"genai-prices {genai_prices_version()} ({provider_id}/{info.id})",
        input=_tiered(getattr(prices, "input_mtok", None)) or (0.0, ()),
        output=_tiered(getattr(prices, "output_mtok", None)) or (0.0, ()),
        cache_read=_tiered(getattr(prices, "cache_read_mtok", None)),
        cache_write=_tiered(getattr(prices, "cache_write_mtok", None)),
        per_request=float(getattr(prices, "requests_kcount", None) or 0) / 1000,
    )


class PriceBook:
    """Rates per (alias, model), resolved once; `cost()` prices one response."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], Rates] = {}

    def rates(self, spec: ModelSpec, model: str | None = None) -> Rates:
        name = model or spec.model
        key = (spec.alias, name)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = self._resolve(spec, name)
        return rates

    def _resolve(self, spec: ModelSpec, model: str) -> Rates:
        if spec.price is not None:
            return rates_from_override(spec.alias, spec.price)
        provider_id = GENAI_PROVIDERS.get(spec.provider)
        if provider_id is not None:
            rates = rates_from_genai(provider_id, model)
            if not rates.known and model != spec.model and spec.model:
                # the answering model's dated name may be unlisted: try the alias's model
                rates = rates_from_genai(provider_id, spec.model)
            return rates
        if spec.provider in LOCAL_PROVIDERS:
            return Rates(source="local")
        return Rates(
            source=f"unknown: no price for provider '{spec.provider}' — set "
            f"[models.{spec.alias}] price",
            known=False,
        )

    def fixed_cost(self, rates: Rates) -> Cost | None:
        """The one Cost every call at `rates` has, whatever its tokens, latency or cache
        tier (unknown: no amount; free: 0 spent, 0 saved); None when it depends on them."""
        if not rates.known:
            return _cost(None, rates, 0.0)
        if rates.free:
            return _cost(0.0, rates, 0.0)
        return None

    def cost(self, spec: ModelSpec, response: ChatResponse) -> Cost:
        """The response's cost; on a cache hit, 0 spent and the upstream cost saved."""
        rates = self.rates(spec, response.model)
        if not rates.known:
            return _cost(None, rates, 0.0)
        tokens = token_cost(rates, response.usage, spec.provider)
        if response.cache_tier is not None:
            return _cost(0.0, rates, tokens)
        return _cost(tokens + rates.per_hour * response.latency_s / 3600, rates, 0.0)


def _cost(amount: float | None, rates: Rates, saved: float) -> Cost:
    # every field is ours and typed: skip pydantic's validation on the call path
    return trusted(
        Cost, {"amount": amount, "currency": rates.currency, "source": rates.source, "saved": saved}
    )
