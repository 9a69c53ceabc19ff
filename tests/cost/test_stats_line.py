"""The stats line `herd chat` prints on stderr: who answered, cache, tokens, cost."""

from __future__ import annotations

from modelherd.cli import stats_line
from modelherd.types import ChatResponse, Cost, Usage


def _response(**extra: object) -> ChatResponse:
    usage = Usage(input_tokens=20, output_tokens=50, cost=Cost(amount=0.0125, source="x"))
    fields = {"content": "a", "model": "m-1", "provider": "openai", "alias": "cloud"}
    return ChatResponse(**{**fields, "usage": usage, "latency_s": 2.0, **extra})  # type: ignore[arg-type]


def test_a_fallback_answer() -> None:
    line = stats_line(_response(fallback_from="primary"))
    assert line == (
        "[cloud · openai/m-1 · fallback from primary · cache miss · 20 in / 50 out tokens · "
        "25.0 tok/s · 2.00s · cost $0.0125]"
    )


def test_a_cache_hit_shows_what_it_saved() -> None:
    response = _response(cache_tier="disk", latency_s=0.001)
    assert response.usage.cost is not None
    response.usage.cost = Cost(amount=0.0, saved=0.0125, source="x")
    assert stats_line(response) == (
        "[cloud · openai/m-1 · cache disk · 20 in / 50 out tokens · 0.00s · cost 0 (saved $0.0125)]"
    )


def test_an_unknown_price_is_said_not_hidden() -> None:
    response = _response()
    response.usage.cost = Cost(amount=None, source="unknown: no price")
    assert stats_line(response).endswith("· cost unknown (no price: docs/cost.md)]")
