"""The repository's example plugins.toml is valid, and every plugin accepts its table."""

from __future__ import annotations

from pathlib import Path

import anyio
from modelherd import Herd
from modelherd.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "plugins.toml"


def test_example_config_validates_and_starts_every_plugin() -> None:
    config = load_config(EXAMPLE)
    assert config.herd.default_model == "local"
    herd = Herd(config, env={}, strict=True)  # strict: a plugin rejecting its table raises

    async def start() -> None:
        async with herd:
            for name in ("swarm", "trading", "risk"):
                herd.agent(name)  # validates [agents.<name>]

    anyio.run(start)
    assert not [r for r in herd.plugin_records if r.status == "failed"]
