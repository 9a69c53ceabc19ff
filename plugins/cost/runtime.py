"""The per-call half of the cost plugin: price each response in `after_call`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelherd import hookimpl
from modelherd.plugins.cost.prices import PriceBook
from modelherd.types import ChatRequest, ChatResponse, Cost, Metric, ModelSpec, assign

if TYPE_CHECKING:
    from modelherd import Herd

#: what pricing one (alias, answering model) needs, learnt on its first call: the spec,
#: and the Cost every call there has when it does not depend on the call
_Pricing = tuple[ModelSpec, Cost | None]


class CostHooks:
    def __init__(self, herd: Herd) -> None:
        self.herd = herd
        self.book = PriceBook()
        self._pricing: dict[tuple[str | None, str], _Pricing] = {}

    # tryfirst: budgets, the call log and the alerts read the cost in their own
    # after_call, which pluggy runs after this one
    @hookimpl(tryfirst=True)
    def after_call(self, request: ChatRequest, response: ChatResponse, herd: Herd) -> None:
        alias = response.alias or request.alias
        pricing = self._pricing.get((alias, response.model))
        if pricing is None:
            pricing = self._learn(herd, alias, response.model)
        spec, fixed = pricing
        if fixed is not None:
            # a free local model or an unpriced one: nothing to compute, nothing to emit
            assign(response.usage, "cost", fixed)
            return
        cost = self.book.cost(spec, response)
        assign(response.usage, "cost", cost)
        if (cost.amount or cost.saved) and herd.wants_metrics:
            attrs = {
                "gen_ai.provider.name": response.provider,
                "gen_ai.request.model": spec.model,
                "herd.alias": spec.alias,
                "herd.currency": cost.currency,
            }
            if request.tenant:
                attrs["herd.tenant"] = request.tenant
            if request.agent:
                attrs["herd.agent"] = request.agent
            if cost.amount:
                herd.emit(Metric("herd.cost", cost.amount, cost.currency, "counter", attrs))
            if cost.saved:
                herd.emit(Metric("herd.cost.saved", cost.saved, cost.currency, "counter", attrs))

    def _learn(self, herd: Herd, alias: str | None, model: str) -> _Pricing:
        spec = herd.resolve(alias)
        pricing = self._pricing[(alias, model)] = (
            spec,
            self.book.fixed_cost(self.book.rates(spec, model)),
        )
        return pricing
