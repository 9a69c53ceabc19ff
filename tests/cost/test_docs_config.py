"""The TOML in docs/cost.md and docs/logs.md is valid configuration, as written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from modelherd.config import validate_table
from modelherd.plugins.observability.logs.settings import LogSettings
from modelherd.plugins.resources.tenants.budget_settings import BudgetSettings
from modelherd.types import ModelSpec

DOCS = Path(__file__).resolve().parents[2] / "docs"


def toml_blocks(name: str) -> list[dict[str, Any]]:
    text = (DOCS / name).read_text(encoding="utf-8")
    # blocks inside list items are indented: drop the indent before parsing
    blocks = re.findall(r"^( *)```toml\n(.*?)^\1```", text, flags=re.S | re.M)
    return [tomllib.loads(re.sub(rf"(?m)^{indent}", "", body)) for indent, body in blocks]


def test_cost_examples_validate() -> None:
    blocks = toml_blocks("cost.md")
    assert len(blocks) == 2
    models, budgets = blocks
    for alias, table in models["models"].items():
        ModelSpec(alias=alias, **{k: v for k, v in table.items() if k != "base_url"})
    settings = validate_table(BudgetSettings, budgets["plugins"]["budgets"], "docs", "docs")
    assert settings.tenants["alice"].daily == 5.0
    assert settings.agents["swarm"].daily == 1.0


def test_logs_examples_validate() -> None:
    for block in toml_blocks("logs.md"):
        validate_table(LogSettings, block["plugins"]["logs"], "docs", "docs")
