"""Plugin entry point for the `rbi` agent: research an idea -> write backtesting.py code -> run it, debug it, report.

This module is imported when plugins load, so it stays thin: the agent itself
(rbi_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl

from .entry import add_run_command, lazy_getattr


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("rbi", "modelherd.agents.rbi_agent:RBIAgent")


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import rbi_command

    add_run_command(cli, rbi_command)


# `from modelherd.agents.rbi import RBIAgent` still works (loaded on first access)
__getattr__ = lazy_getattr(__name__, "modelherd.agents.rbi_agent")
