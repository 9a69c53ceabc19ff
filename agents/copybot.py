"""Plugin entry point for the `copybot` agent: follow a tracked portfolio; for each position ask whether to mirror it.

This module is imported when plugins load, so it stays thin: the agent itself
(copybot_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("copybot", "modelherd.agents.copybot_agent:CopyBotAgent")


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import copybot_command

    run_group = cli.commands.get("run")
    if run_group is not None and hasattr(run_group, "add_command"):
        run_group.add_command(copybot_command)


def __getattr__(name: str) -> Any:
    """`from modelherd.agents.copybot import CopyBotAgent` still works (loaded on first access)."""
    from . import copybot_agent

    try:
        return getattr(copybot_agent, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
