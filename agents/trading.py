"""Plugin entry point for the `trading` agent: market data -> compact features -> BUY / SELL / NOTHING -> paper trade.

This module is imported when plugins load, so it stays thin: the agent itself
(trading_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("trading", "modelherd.agents.trading_agent:TradingAgent")


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import trading_command

    run_group = cli.commands.get("run")
    if run_group is not None and hasattr(run_group, "add_command"):
        run_group.add_command(trading_command)


def __getattr__(name: str) -> Any:
    """`from modelherd.agents.trading import TradingAgent` still works (loaded on first access)."""
    from . import trading_agent

    try:
        return getattr(trading_agent, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
