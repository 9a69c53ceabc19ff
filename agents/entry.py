"""What the thin agent entry modules (swarm.py, trading.py, rbi.py, copybot.py) share.

Those modules are imported when plugins load, so this one imports nothing heavy: not
click, not the agent implementations (each is imported on first use).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def add_run_command(cli: Any, command: Any) -> None:
    """Put `command` under `herd run` (skipped when the CLI has no `run` group)."""
    run_group = cli.commands.get("run")
    if run_group is not None and hasattr(run_group, "add_command"):
        run_group.add_command(command)


def lazy_getattr(entry_module: str, implementation: str) -> Callable[[str], Any]:
    """A module `__getattr__` for `entry_module` that looks names up in `implementation`,
    imported on first access: `from modelherd.agents.rbi import RBIAgent` keeps working."""

    def __getattr__(name: str) -> Any:
        module = importlib.import_module(implementation)
        try:
            return getattr(module, name)
        except AttributeError:
            raise AttributeError(f"module {entry_module!r} has no attribute {name!r}") from None

    return __getattr__
