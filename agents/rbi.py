"""Plugin entry point for the `rbi` agent: research an idea -> write backtesting.py code -> run it, debug it, report.

This module is imported when plugins load, so it stays thin: the agent itself
(rbi_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("rbi", "modelherd.agents.rbi_agent:RBIAgent")


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import rbi_command

    run_group = cli.commands.get("run")
    if run_group is not None and hasattr(run_group, "add_command"):
        run_group.add_command(rbi_command)


def __getattr__(name: str) -> Any:
    """`from modelherd.agents.rbi import RBIAgent` still works (loaded on first access)."""
    from . import rbi_agent

    try:
        return getattr(rbi_agent, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
