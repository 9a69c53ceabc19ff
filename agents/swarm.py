"""Plugin entry point for the `swarm` agent: ask N members at once and reach a consensus.

This module is imported when plugins load, so it stays thin: the agent itself
(swarm_agent.py) is imported only when the agent is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelherd import hookimpl

from .entry import add_run_command, lazy_getattr


@hookimpl
def register_agents(register: Callable[..., None]) -> None:
    # by name: listing agents imports none of them
    register("swarm", "modelherd.agents.swarm_agent:SwarmAgent")


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import swarm_command

    cli.add_command(swarm_command)
    # `herd run swarm "Q" -m gpt` is the same command (the generic `run` one would take
    # "-m gpt" as more words of the question)
    add_run_command(cli, swarm_command)


# `from modelherd.agents.swarm import SwarmAgent` still works (loaded on first access)
__getattr__ = lazy_getattr(__name__, "modelherd.agents.swarm_agent")
