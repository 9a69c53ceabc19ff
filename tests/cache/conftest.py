"""Fixtures for the cache tests: a real redis-server per test (see cache_redis_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_redis_server import REDIS_BIN, RedisServer, start_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_BIN is None:
        pytest.skip(
            "redis-server is not installed — install it with `sudo apt-get install redis-server`"
        )
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()
