"""Fixtures: an in-process gateway over MockModels, and its keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from modelherd.testing import MockModel, make_herd

from .gateway_server import GatewayServer

pytest.importorskip("prometheus_client")


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    """`make_gateway(models={...}, config={...}, plugins=(...), **serve_settings)`."""
    made: list[GatewayServer] = []

    def make(
        models: dict[str, MockModel] | None = None,
        config: dict[str, Any] | None = None,
        plugins: tuple[Any, ...] = (),
        **settings: Any,
    ) -> GatewayServer:
        herd = make_herd(models or {"mock": MockModel()}, config=config, plugins=plugins)
        settings.setdefault("key_cache_s", 0.0)
        server = GatewayServer(herd, tmp_path / f"keys{len(made)}.json", **settings).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayServer]) -> GatewayServer:
    return make_gateway({"mock": MockModel(default="hello there friend"), "other": MockModel()})
