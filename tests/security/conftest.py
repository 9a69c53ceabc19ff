"""Fixtures for the security tests: a real redis-server the test may stop and restart."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# one redis-server launcher for the whole suite: the cache tests' (no package there)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))

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
