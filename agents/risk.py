"""Plugin entry point for the `risk` agent: watch a paper portfolio against limits; ask a model only when one is hit.

This module is imported when plugins load, so it stays thin: the agent itself
(risk_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("risk", "modelherd.agents.risk_agent:RiskAgent")


def __getattr__(name: str) -> Any:
    """`from modelherd.agents.risk import RiskAgent` still works (loaded on first access)."""
    from . import risk_agent

    try:
        return getattr(risk_agent, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
