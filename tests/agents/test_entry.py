"""The thin entry modules: loading plugins imports no agent implementation, and the
implementations' names are still reachable through the entry modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from modelherd.agents import entry

SCRIPT = """
import json, sys
import modelherd
herd = modelherd.Herd(env={})
herd.pm
herd.agents
print(json.dumps(sorted(m for m in sys.modules
                        if m.startswith("modelherd.agents.") or m == "click")))
"""


def test_loading_plugins_imports_no_agent_implementation(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    loaded = json.loads(out.stdout)
    assert "modelherd.agents.trading" in loaded  # the entry modules themselves did load
    assert [m for m in loaded if m.endswith("_agent") or m == "click"] == []


def test_entry_module_getattr() -> None:
    from modelherd.agents import rbi
    from modelherd.agents.rbi import RBIAgent
    from modelherd.agents.rbi_agent import RBIAgent as Implementation

    assert RBIAgent is Implementation
    with pytest.raises(
        AttributeError, match=r"module 'modelherd\.agents\.rbi' has no attribute 'Nope'"
    ):
        rbi.Nope  # noqa: B018


class Group:
    def __init__(self) -> None:
        self.added: list[str] = []

    def add_command(self, command: str) -> None:
        self.added.append(command)


class Cli:
    def __init__(self, commands: dict[str, object]) -> None:
        self.commands = commands


def test_add_run_command() -> None:
    run = Group()
    entry.add_run_command(Cli({"run": run}), "trading")
    assert run.added == ["trading"]
    entry.add_run_command(Cli({}), "trading")  # no `run` group: nothing to add to
