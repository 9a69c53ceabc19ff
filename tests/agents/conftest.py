"""Shared helpers for the agent tests: herds with MockModels, data written to tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modelherd.agents import copybot, market_data, rbi, risk, swarm, trading
from modelherd.testing import MockModel, make_herd

AGENT_PLUGINS: tuple[Any, ...] = (market_data, swarm, trading, rbi, copybot, risk)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every agent writes under this test's tmp_path, never the user's data dir."""
    folder = tmp_path / "herd-data"
    monkeypatch.setenv("HERD_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def herd_factory() -> Iterator[Any]:
    made: list[Any] = []

    def build(models: dict[str, MockModel], agents: dict[str, Any] | None = None) -> Any:
        herd = make_herd(models, config={"agents": agents or {}}, plugins=AGENT_PLUGINS)
        made.append(herd)
        return herd

    yield build
    for herd in made:
        herd.close()
