"""`herd serve` benchmark: the gateway vs calling the upstream directly, --workers 2 vs 1,
RSS per worker, LiteLLM's proxy when a litellm venv is given, and the HTTP server
choice (aiohttp vs uvicorn vs granian on the same tiny app) — one run, one loopback
upstream, ratios against baselines measured in the same run.

    .venv/bin/python bench/gateway.py                  # ~2-4 min on 2 shared cores
    .venv/bin/python bench/gateway.py --quick          # a smoke run
    .venv/bin/python bench/gateway.py --litellm /tmp/litellm-venv/bin/litellm

The upstream is bench/providers.py's canned OpenAI-compatible server in its own
process. The client is a raw aiohttp keep-alive client with pre-encoded bodies (the
same for every target, so the ratios compare servers, not clients); every prompt is
new, so no cache or coalescer answers. On a 2-core machine the client, the gateway
and the upstream share the cores: the calls/s ratios are a floor, not the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HERD = str(Path(sys.executable).with_name("herd"))
CONCURRENCY = 64
IN_PROCESS = "herd.chat in-process"
_UNIQUE = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(model: str) -> bytes:
    text = f"question {next(_UNIQUE)}-{time.perf_counter_ns()}"
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()


class Target:
    """Something that answers POST {path} with a chat completion."""

    def __init__(self, name: str, url: str, model: str, key: str | None, pids: list[int]) -> None:
        self.name = name
        self.url = url
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.pids = pids


async def one(session: Any, target: Target) -> None:
    import aiohttp

    for attempt in (1, 2):
        try:
            async with session.post(
                target.url, data=body(target.model), headers=target.headers
            ) as r:
                data = await r.read()
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            # a keep-alive connection the server closed while idle (uvicorn, under
            # LiteLLM, closes them after 5 s): what any client does, send it again
            if attempt == 2:
                raise
            continue
        if r.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {r.status}: {data[:200]!r}")
        return


async def latencies(
    session: Any, targets: list[Target], rounds: int, herd: Any = None
) -> dict[str, list[float]]:
    """Sequential calls, interleaved across targets so machine noise hits them alike.

    With `herd`, also `herd.chat` in this process on the same upstream: what the
    pipeline and the provider's SDK cost without any HTTP in front (so the gateway's
    own share is `herd serve` minus this)."""
    out: dict[str, list[float]] = {t.name: [] for t in targets}
    if herd is not None:
        out[IN_PROCESS] = []
    for _ in range(rounds):
        for target in targets:
            start = time.perf_counter()
            await one(session, target)
            out[target.name].append(time.perf_counter() - start)
        if herd is not None:
            start = time.perf_counter()
            await herd.chat("m", f"in-process {next(_UNIQUE)}")
            out[IN_PROCESS].append(time.perf_counter() - start)
    return out


async def throughput(session: Any, target: Target, total: int) -> float:
    counter = iter(range(total))

    async def worker() -> None:
        for _ in counter:
            await one(session, target)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - start)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (children not included)."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def box_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    import psutil

    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


async def measured_throughput(
    session: Any, target: Target, total: int, upstream_pid: int
) -> dict[str, float]:
    """calls/s at concurrency 64, and the CPU each side spent per call meanwhile.

    On a 2-core box the load generator (this process) and the upstream run on the same
    cores as the gateway, so what they use is what the gateway cannot have; the rest
    of the machine (other sessions' work) shows as `other`."""
    mine = [os.getpid()]
    upstream = [upstream_pid] if upstream_pid not in target.pids else []
    before = (
        cpu_seconds(mine),
        cpu_seconds(upstream),
        cpu_seconds(target.pids),
        box_busy_seconds(),
    )
    start = time.perf_counter()
    rate = await throughput(session, target, total)
    wall = time.perf_counter() - start
    after = (cpu_seconds(mine), cpu_seconds(upstream), cpu_seconds(target.pids), box_busy_seconds())
    client, up, server, box = (b - a for a, b in zip(before, after, strict=True))
    return {
        "calls_per_s": rate,
        "wall_s": wall,
        "client_cpu_ms_per_call": client / total * 1e3,
        "upstream_cpu_ms_per_call": up / total * 1e3,
        "server_cpu_ms_per_call": server / total * 1e3,
        "other_cpu_ms_per_call": max(0.0, box - client - up - server) / total * 1e3,
        "client_cores": client / wall,
        "upstream_cores": up / wall,
        "server_cores": server / wall,
        "other_cores": max(0.0, box - client - up - server) / wall,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url}: not up within {timeout}s")


def rss_mb(pids: list[int]) -> list[float]:
    import psutil

    return [psutil.Process(p).memory_info().rss / 2**20 for p in pids]


def worker_pids(proc: subprocess.Popen[Any], workers: int) -> list[int]:
    import psutil

    if workers == 1:
        return [proc.pid]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = psutil.Process(proc.pid).children()
        if len(children) >= workers:
            return [c.pid for c in children]
        time.sleep(0.2)
    raise RuntimeError("the workers did not start")


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def herd_config(tmp: Path, upstream: int) -> tuple[Path, str]:
    sys.path.insert(0, str(HERE.parent))
    from modelherd.plugins.serve.admin import make_record
    from modelherd.plugins.serve.keys import FileKeyStore

    keys = tmp / "keys.json"
    record, token = make_record("bench", None, None)
    FileKeyStore(keys).add(record)
    cfg = tmp / "plugins.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [herd]
            default_model = "m"
            retries = 0
            [models.m]
            provider = "openai_compatible"
            base_url = "http://127.0.0.1:{upstream}/v1"
            model = "bench-model"
            [plugins.serve]
            keys_path = "{keys}"
            # the bench's own call log and disk cache, not the user's (other processes on
            # this box write those); --workers 2 share these files as they would in use
            [plugins.logs]
            path = "{tmp / "logs.db"}"
            [plugins.cache_disk]
            path = "{tmp / "responses.sqlite3"}"
            """
        )
    )
    return cfg, token


def start_herd(procs: list[subprocess.Popen[Any]], cfg: Path, token: str, workers: int) -> Target:
    port = free_port()
    proc = subprocess.Popen(
        [HERD, "--config", str(cfg), "serve", "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    name = f"herd serve --workers {workers}"
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return Target(name, url, "m", token, worker_pids(proc, workers))


def start_litellm(
    procs: list[subprocess.Popen[Any]], binary: str, tmp: Path, upstream: int
) -> Target:
    port = free_port()
    cfg = tmp / "litellm.yaml"
    # LiteLLM's documented proxy config: one model, a master key (no database)
    cfg.write_text(
        textwrap.dedent(
            f"""
            model_list:
              - model_name: m
                litellm_params:
                  model: openai/bench-model
                  api_base: http://127.0.0.1:{upstream}/v1
                  api_key: sk-bench-upstream
            general_settings:
              master_key: sk-bench-master
            litellm_settings:
              telemetry: false
            """
        )
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    proc = subprocess.Popen(
        [binary, "--config", str(cfg), "--port", str(port), "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    procs.append(proc)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=180)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return Target("litellm proxy", url, "m", "sk-bench-master", [proc.pid])


# ---- the HTTP server choice: one tiny JSON app under three servers -------------------

APP = textwrap.dedent(
    """
    import json, sys
    BODY = json.dumps({"ok": True}).encode()
    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": BODY})
    def aiohttp_main(port):
        from aiohttp import web
        async def handler(request):
            await request.read()
            return web.Response(body=BODY, content_type="application/json")
        app = web.Application()
        app.router.add_post("/x", handler)
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    if __name__ == "__main__":
        kind, port = sys.argv[1], int(sys.argv[2])
        if kind == "aiohttp":
            aiohttp_main(port)
        elif kind == "uvicorn":
            import uvicorn
            uvicorn.run("app:asgi", host="127.0.0.1", port=port, log_level="error",
                        access_log=False)
        elif kind == "granian":
            from granian import Granian
            Granian("app:asgi", address="127.0.0.1", port=port, interface="asgi",
                    log_enabled=False).serve()
    """
)


async def server_choice(tmp: Path, total: int, rounds: int) -> dict[str, Any]:
    import aiohttp

    (tmp / "app.py").write_text(APP)
    results: dict[str, Any] = {}
    for kind in ("aiohttp", "uvicorn", "granian"):
        try:
            __import__(kind)
        except ImportError:
            results[kind] = {"skipped": f"{kind} is not installed"}
            continue
        port = free_port()
        with processes() as procs:
            proc = subprocess.Popen(
                [sys.executable, "app.py", kind, str(port)],
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            url = f"http://127.0.0.1:{port}/x"
            start = time.monotonic()
            while time.monotonic() - start < 30:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                time.sleep(0.1)
            target = Target(kind, url, "-", None, [proc.pid])
            connector = aiohttp.TCPConnector(limit=CONCURRENCY)
            async with aiohttp.ClientSession(connector=connector) as session:
                await throughput(session, target, 200)  # warm-up
                lat = (await latencies(session, [target], rounds))[kind]
                rate = await throughput(session, target, total)
            results[kind] = {"calls_per_s": rate, "p50_us": pct(lat, 0.5) * 1e6}
    return results


# ---- the run ------------------------------------------------------------------------


async def measure(
    targets: list[Target], direct: Target, total: int, rounds: int, cfg: Path
) -> dict[str, Any]:
    import aiohttp
    from modelherd import Herd

    herd = Herd(config_path=str(cfg))
    await herd.start()
    for i in range(50):
        await herd.chat("m", f"warm-up {i}")
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        for target in [direct, *targets]:
            await throughput(session, target, 300)  # warm-up: connections, first paths
        lat = await latencies(session, [direct, *targets], rounds, herd)
        await herd.aclose()
        out: dict[str, Any] = {
            IN_PROCESS: {
                "calls_per_s": float("nan"),
                "p50_us": pct(lat[IN_PROCESS], 0.5) * 1e6,
                "p99_us": pct(lat[IN_PROCESS], 0.99) * 1e6,
                "rss_mb": [],
            }
        }
        for target in [direct, *targets]:
            run = await measured_throughput(session, target, total, direct.pids[0])
            out[target.name] = {
                **run,
                "p50_us": pct(lat[target.name], 0.5) * 1e6,
                "p99_us": pct(lat[target.name], 0.99) * 1e6,
                "rss_mb": rss_mb(target.pids),
            }
    return out


def workers_ceiling(one: dict[str, float], cores: float) -> float:
    """The best --workers 2 vs 1 ratio `cores` allow, from the CPU each side used per
    call at --workers 1: one worker is capped by one core, two workers by the cores
    left after the load generator and the upstream took theirs."""
    gateway = one["server_cpu_ms_per_call"]
    shared = one["client_cpu_ms_per_call"] + one["upstream_cpu_ms_per_call"]
    cap_one = min(1.0 / gateway, cores / (gateway + shared))
    cap_two = min(2.0 / gateway, cores / (gateway + shared))
    return cap_two / cap_one


def report(results: dict[str, Any], servers: dict[str, Any]) -> None:
    direct = results["upstream directly"]
    results = {
        "upstream directly": direct,
        **{k: v for k, v in results.items() if k != "upstream directly"},
    }
    print(f"\nconcurrency {CONCURRENCY} for calls/s; sequential calls for latency (µs)")
    print(f"{'target':<26} {'calls/s':>9} {'p50':>8} {'p99':>8}  RSS per process (MiB)")
    for name, r in results.items():
        rss = ", ".join(f"{m:.0f}" for m in r["rss_mb"]) or "(this process)"
        print(f"{name:<26} {r['calls_per_s']:>9.0f} {r['p50_us']:>8.0f} {r['p99_us']:>8.0f}  {rss}")
    one = results["herd serve --workers 1"]
    two = results.get("herd serve --workers 2")
    inproc = results[IN_PROCESS]
    print("\nratios")
    print(
        f"  the gateway's own share (herd serve minus herd.chat in-process): p50 "
        f"{(one['p50_us'] - inproc['p50_us']) / 1000:.2f} ms, p99 "
        f"{(one['p99_us'] - inproc['p99_us']) / 1000:.2f} ms"
    )
    print(
        f"  herd serve adds p50 {(one['p50_us'] - direct['p50_us']) / 1000:.2f} ms, "
        f"p99 {(one['p99_us'] - direct['p99_us']) / 1000:.2f} ms over the upstream (target p50 <= 1 ms)"
    )
    print(
        f"  herd serve calls/s vs upstream directly: {one['calls_per_s'] / direct['calls_per_s']:.2f}x"
    )
    cores = os.cpu_count() or 1
    free = max(0.1, cores - one.get("other_cores", 0.0))
    if two is not None:
        print(
            f"  --workers 2 vs 1: {two['calls_per_s'] / one['calls_per_s']:.2f}x calls/s (target >= 1.7x); "
            f"the ceiling from the CPU per call below: {workers_ceiling(one, cores):.2f}x "
            f"with all {cores} cores, {workers_ceiling(one, free):.2f}x with the "
            f"{free:.2f} cores the rest of the machine left free during the --workers 1 run"
        )
    lite = results.get("litellm proxy")
    if lite is not None:
        print(
            f"  herd serve vs litellm proxy: {one['calls_per_s'] / lite['calls_per_s']:.2f}x calls/s "
            f"(target >= 10x); litellm adds p50 {(lite['p50_us'] - direct['p50_us']) / 1000:.2f} ms"
        )
    print(
        "\nCPU per call during the calls/s runs, ms (cores busy): load generator (this "
        "process) | upstream | target | everything else on the machine"
    )
    for name, r in results.items():
        if "client_cpu_ms_per_call" not in r:
            continue
        print(
            f"  {name:<26} {r['client_cpu_ms_per_call']:6.2f} ({r['client_cores']:.2f}) | "
            f"{r['upstream_cpu_ms_per_call']:6.2f} ({r['upstream_cores']:.2f}) | "
            f"{r['server_cpu_ms_per_call']:6.2f} ({r['server_cores']:.2f}) | "
            f"{r['other_cpu_ms_per_call']:6.2f} ({r['other_cores']:.2f})"
        )
    print("\nHTTP server choice (one tiny JSON app, same client)")
    base = servers.get("aiohttp", {})
    for name, r in servers.items():
        if "skipped" in r:
            print(f"  {name:<8} skipped: {r['skipped']}")
            continue
        ratio = r["calls_per_s"] / base["calls_per_s"] if base.get("calls_per_s") else float("nan")
        print(
            f"  {name:<8} {r['calls_per_s']:>7.0f} calls/s ({ratio:.2f}x aiohttp), p50 {r['p50_us']:.0f} µs"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (smoke run)")
    parser.add_argument(
        "--litellm", default=None, help="the `litellm` binary of a litellm[proxy] venv"
    )
    parser.add_argument("--no-servers", action="store_true", help="skip the HTTP server comparison")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    total, rounds = (600, 100) if args.quick else (3000, 400)
    started = time.perf_counter()
    load_before = os.getloadavg()
    print(
        f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
        f"({os.cpu_count()} cores)",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="herd-bench-gateway-"))
    try:
        with processes() as procs:
            upstream = subprocess.Popen(
                [sys.executable, str(HERE / "providers.py"), "--serve"],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(upstream)
            assert upstream.stdout is not None
            up_port = int(upstream.stdout.readline())
            direct = Target(
                "upstream directly",
                f"http://127.0.0.1:{up_port}/v1/chat/completions",
                "bench-model",
                None,
                [upstream.pid],
            )
            cfg, token = herd_config(tmp, up_port)
            targets = [start_herd(procs, cfg, token, 1), start_herd(procs, cfg, token, 2)]
            litellm = args.litellm
            if litellm:
                targets.append(start_litellm(procs, litellm, tmp, up_port))
            results = asyncio.run(measure(targets, direct, total, rounds, cfg))
        servers = {} if args.no_servers else asyncio.run(server_choice(tmp, total, rounds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, servers)
    if not args.litellm:
        print(
            "\n  litellm proxy: not measured (pass --litellm PATH to a litellm[proxy] venv's binary)"
        )
    if args.json:
        print(json.dumps({"gateway": results, "servers": servers}, indent=2))
    load = os.getloadavg()
    print(
        f"\ntotal {time.perf_counter() - started:.0f}s, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load average before {load_before[0]:.2f}, after "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    main()
