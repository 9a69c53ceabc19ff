"""Plugin entry point for the `copybot` agent: follow a tracked portfolio; for each position ask whether to mirror it.

This module is imported when plugins load, so it stays thin: the agent itself
(copybot_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl

from .entry import add_run_command, lazy_getattr


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("copybot", "modelherd.agents.copybot_agent:CopyBotAgent")


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import copybot_command

    add_run_command(cli, copybot_command)


# `from modelherd.agents.copybot import CopyBotAgent` still works (loaded on first access)
__getattr__ = lazy_getattr(__name__, "modelherd.agents.copybot_agent")
