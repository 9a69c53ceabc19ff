"""The per-call half of the cost plugin: price each response in `after_call`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelherd import hookimpl
from modelherd.plugins.cost.prices import PriceBook
from modelherd.types import ChatRequest, ChatResponse, Metric, assign

if TYPE_CHECKING:
    from modelherd import Herd


class CostHooks:
    def __init__(self, herd: Herd) -> None:
        self.herd = herd
        self.book = PriceBook()

    # tryfirst: budgets, the call log and the alerts read the cost in their own
    # after_call, which pluggy runs after this one
    @hookimpl(tryfirst=True)
    def after_call(self, request: ChatRequest, response: ChatResponse, herd: Herd) -> None:
        spec = herd.resolve(response.alias or request.alias)
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
