"""Running the gateway: one worker in this process, or N worker processes on one port.

Workers share the port with SO_REUSEPORT (the kernel spreads connections across
them), so there is no proxy process in the path. Each worker is a whole Herd; what
must be shared between workers and hosts (L3 cache, tenant limits, API keys) lives in
Redis. On SIGTERM/SIGINT a worker stops accepting, answers 503 to new requests on
open connections, lets in-flight calls and streams finish for up to `drain_s`, then
closes the herd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from modelherd.errors import ConfigError
from modelherd.plugins.serve.settings import ServeSettings

if TYPE_CHECKING:
    from aiohttp import web
    from modelherd import Herd
    from modelherd.plugins.serve.gateway import Gateway

log = logging.getLogger("modelherd.serve")


def build_gateway(herd: Herd, settings: ServeSettings) -> Gateway:
    from modelherd.plugins.serve.auth import Authenticator
    from modelherd.plugins.serve.gateway import Gateway
    from modelherd.plugins.serve.keys import open_store
    from modelherd.plugins.serve.metrics import GatewayMetrics

    store = open_store(settings, herd.env)
    metrics = GatewayMetrics(settings.label_limit)
    herd.register_plugin(metrics, name="serve-metrics")
    return Gateway(herd, settings, Authenticator(store, settings.key_cache_s), metrics)


def ssl_context(settings: ServeSettings) -> Any:
    if not settings.certfile and not settings.keyfile:
        return None
    if not (settings.certfile and settings.keyfile):
        raise ConfigError(
            "[plugins.serve] certfile and keyfile go together — set both (--certfile, --keyfile), "
            "or neither and terminate TLS at a reverse proxy (docs/deploy.md)"
        )
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[plugins.serve] certfile/keyfile: cannot load {settings.certfile} / "
            f"{settings.keyfile} ({type(exc).__name__}) — check the paths and that the key matches"
        ) from None
    return context


#: the first aiohttp whose server closes a connection that stalls before its request
#: head is complete (the keep-alive timer now runs from the moment a connection opens);
#: older ones wait on such a client forever, whatever the timeouts say
HEAD_TIMEOUT_AIOHTTP = (3, 14, 4)


def check_aiohttp(version: str | None = None) -> None:
    """A server that cannot time out a slow client is a config error, not a default."""
    if version is None:
        import aiohttp

        version = aiohttp.__version__
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if parts < HEAD_TIMEOUT_AIOHTTP:
        need = ".".join(map(str, HEAD_TIMEOUT_AIOHTTP))
        raise ConfigError(
            f"herd serve needs aiohttp >= {need} (this is {version}: its server never drops "
            f'a client that stalls mid-request-head) — pip install -U "aiohttp>={need}"'
        )


def make_runner(gateway: Gateway) -> web.AppRunner:
    from aiohttp import web
    from modelherd.plugins.serve.app import build_app

    check_aiohttp()
    s = gateway.settings
    return web.AppRunner(
        build_app(gateway),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=s.drain_s,
        # idle keep-alive connections, and (aiohttp >= 3.14.4) connections whose request
        # head has not fully arrived — even trickling a byte at a time — are closed
        # this long after they opened or after their last response
        keepalive_timeout=s.client_timeout_s,
        max_line_size=s.max_header_bytes,
        max_field_size=s.max_header_bytes,
    )


async def run_worker(herd: Herd, settings: ServeSettings, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then drain and close."""
    from aiohttp import web

    gateway = build_gateway(herd, settings)
    context = ssl_context(settings)
    runner = make_runner(gateway)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host, settings.port, reuse_port=reuse_port or None, ssl_context=context
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"[plugins.serve] cannot listen on {settings.host}:{settings.port} ({exc.strerror}) — "
            f"pick another --port, or stop what holds it"
        ) from None
    sockets = getattr(site._server, "sockets", None) or ()
    port = sockets[0].getsockname()[1] if sockets else settings.port
    scheme = "https" if context is not None else "http"
    print(
        f"herd serve: listening on {scheme}://{settings.host}:{port} (pid {os.getpid()})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        gateway.draining = True
        started = time.monotonic()
        await runner.cleanup()  # stops listening; waits up to drain_s for in-flight work
        await herd.aclose()
        print(
            f"herd serve: pid {os.getpid()} drained in {time.monotonic() - started:.2f}s",
            flush=True,
        )


def worker_argv(config_path: str | None, profile: str | None, settings: ServeSettings) -> list[str]:
    argv = [sys.executable, "-m", "modelherd.plugins.serve.worker", settings.model_dump_json()]
    if config_path:
        argv += ["--config", config_path]
    if profile:
        argv += ["--profile", profile]
    return argv


def run_workers(config_path: str | None, profile: str | None, settings: ServeSettings) -> int:
    """N worker processes on one port; a worker that dies is restarted (1 s apart)."""
    import shutil
    import tempfile

    if settings.port == 0:
        raise ConfigError("--workers needs a fixed --port (port 0 would give each worker its own)")
    metrics_dir = tempfile.mkdtemp(prefix="herd-serve-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    argv = worker_argv(config_path, profile, settings)
    procs = [subprocess.Popen(argv, env=env) for _ in range(settings.workers)]
    stopping = False
    failed = 0

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while not stopping:
            time.sleep(0.5)
            for index, proc in enumerate(procs):
                code = proc.poll()
                if code == 2 and not stopping:  # a config error: restarting cannot help
                    failed = 2
                    forward(signal.SIGTERM, None)
                    break
                if code is not None and not stopping:
                    log.warning(
                        "herd serve: worker pid %d exited (%d); starting another", proc.pid, code
                    )
                    print(
                        f"herd serve: worker pid {proc.pid} exited ({code}); restarting", flush=True
                    )
                    time.sleep(1.0)
                    procs[index] = subprocess.Popen(argv, env=env)
        deadline = time.monotonic() + settings.drain_s + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        return failed
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
