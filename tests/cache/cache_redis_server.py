"""A real redis-server for the cache tests, on a free loopback port.

The server runs without persistence (`--save "" --appendonly no`) in a temp dir and
is stopped by its PID. Without the binary the Redis tests skip and say how to get it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REDIS_BIN = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_BIN is None,
    reason="redis-server is not installed — install it with `sudo apt-get install redis-server`",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.proc = _spawn(self.port, self.workdir, self.extra)


def _spawn(port: int, workdir: Path, extra: tuple[str, ...]) -> subprocess.Popen[bytes]:
    assert REDIS_BIN is not None
    proc = subprocess.Popen(
        [REDIS_BIN, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


def start_redis(workdir: Path, *extra: str) -> RedisServer:
    port = free_port()
    return RedisServer(port, _spawn(port, workdir, extra), workdir, extra)
