"""The tenants, budgets, logs, cost and serve plugins declare their tables
(`register_settings`), so a typo in them stops `herd models` too — not only the
commands that start the herd. The CLI runs as a subprocess with `--config PATH`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERD = [sys.executable, "-m", "modelherd.cli"]


def herd_models(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HERD, "--config", str(path), "models"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ),
        timeout=120,
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[plugins.tenants]\nredis_ur = "redis://127.0.0.1:6379/0"\n',
            "[plugins.tenants] redis_ur: unknown key — did you mean 'redis_url'? "
            "(see docs/resources.md)",
        ),
        (
            '[plugins.tenants]\nredis_url = "http://127.0.0.1:6379"\n',
            "[plugins.tenants] redis_url: must start with redis://, rediss:// (TLS) or "
            "unix:// — fix that value (see docs/resources.md)",
        ),
        (
            '[plugins.budgets]\ncurrancy = "USD"\n',
            "[plugins.budgets] currancy: unknown key — did you mean 'currency'? (see docs/cost.md)",
        ),
        (
            "[plugins.budgets.tenants.alice]\ndialy = 5.0\n",
            "[plugins.budgets.tenants.alice] dialy: unknown key — did you mean 'daily'? "
            "(see docs/cost.md)",
        ),
        (
            "[plugins.logs]\nretention_day = 7\n",
            "[plugins.logs] retention_day: unknown key — did you mean 'retention_days'? "
            "(see docs/logs.md)",
        ),
        (
            "[plugins.cost]\nenabeld = false\n",
            "[plugins.cost] enabeld: unknown key — did you mean 'enabled'? (see docs/cost.md)",
        ),
        (
            "[plugins.serve]\nprot = 4001\n",
            "[plugins.serve] prot: unknown key — did you mean 'port'? (see docs/serve.md)",
        ),
    ],
)
def test_a_typo_stops_herd_models(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "herd.toml"
    path.write_text(textwrap.dedent(toml))
    out = herd_models(path, tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [f"error: {path}: {message}"]


def test_correct_tables_still_load(tmp_path: Path) -> None:
    # the same five tables, spelt right: `herd models` runs (no false alarm)
    path = tmp_path / "herd.toml"
    path.write_text(
        textwrap.dedent(
            """
            [plugins.tenants]
            redis_url = "redis://127.0.0.1:6379/0"
            [plugins.budgets]
            currency = "USD"
            [plugins.logs]
            retention_days = 7
            [plugins.cost]
            enabled = true
            [plugins.serve]
            port = 4001
            """
        )
    )
    out = herd_models(path, tmp_path)
    assert out.returncode == 0, out.stderr
