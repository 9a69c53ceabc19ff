"""KPI alert lines go to stderr, never into a command's stdout (issue 13).

`herd run` runs, as a subprocess, an agent that prints its own output while a memory
alert (threshold 0.01 %, so it fires on the first evaluation) is raised by the alerts
thread of the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

AGENT = """
import time

import anyio
from modelherd import Agent, hookimpl
from modelherd.plugins.observability import alerts


class WaitForAlert(Agent):
    name = "waitalert"

    async def run(self, args=(), **kwargs):
        print("agent output before", flush=True)
        await self.herd.start()  # what the first model call does
        hooks = alerts.alert_hooks(self.herd)
        deadline = time.monotonic() + 20
        while not hooks.notifier.history and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        print("agent output after", flush=True)
        return {"alerts": [a.kpi for a in hooks.notifier.history]}


@hookimpl
def register_agents(register):
    register(WaitForAlert)
"""


def test_a_firing_alert_goes_to_stderr_not_into_the_output(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "herd_waitalert-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: herd-waitalert\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[modelherd]\nwaitalert = herd_waitalert\n")
    (site / "herd_waitalert.py").write_text(textwrap.dedent(AGENT))
    config = tmp_path / "herd.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [plugins.alerts]
            memory_percent = 0.01
            cpu_percent = false           # a busy test box must not fire a second alert
            gpu_percent = false
            gpu_memory_percent = false
            eval_interval_s = 0.1
            status_dir = "{tmp_path / "status"}"

            [plugins.resource_monitor]
            interval_s = 0.05
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "modelherd.cli", "--config", str(config), "run", "waitalert"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["agent output before", "agent output after"], out.stdout
    assert json.loads("\n".join(lines[2:])) == {"alerts": ["memory"]}
    assert "FIRING" not in out.stdout and "herd alert" not in out.stdout
    fired = [line for line in out.stderr.splitlines() if "[FIRING]" in line]
    assert len(fired) == 1 and fired[0].startswith("herd alert: [FIRING] "), out.stderr
    assert "memory" in fired[0]
