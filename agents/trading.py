"""Plugin entry point for the `trading` agent: market data -> compact features -> BUY / SELL / NOTHING -> paper trade.

This module is imported when plugins load, so it stays thin: the agent itself
(trading_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl

from .entry import add_run_command, lazy_getattr


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("trading", "modelherd.agents.trading_agent:TradingAgent")


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import trading_command

    add_run_command(cli, trading_command)


# `from modelherd.agents.trading import TradingAgent` still works (loaded on first access)
__getattr__ = lazy_getattr(__name__, "modelherd.agents.trading_agent")
