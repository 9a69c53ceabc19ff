"""End-to-end provider benchmark: herd.chat through the openai provider vs the openai
SDK called directly (vs litellm.acompletion when installed), against one fast loopback
OpenAI-compatible server, in one run.

    .venv/bin/python bench/providers.py            # ~30-50 s on 2 cores
    .venv/bin/python bench/providers.py --quick    # fewer calls, a smoke run

Measures, for each client: sequential p50 latency (rounds interleaved across clients,
so machine noise hits them alike) and calls/s at concurrency 64. Prints ratios
against the direct SDK on the same transport. The server runs in its own process
(a minimal asyncio HTTP/1.1 keep-alive server with a canned completion) so that it is
never the bottleneck of the client under test.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "OK", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_b\r\n"
    b"Content-Length: " + str(len(COMPLETION)).encode() + b"\r\n\r\n" + COMPLETION
)

CONCURRENCY = 64


# ---- the server (run with --serve, in its own process) ---------------------------


class _Http(asyncio.Protocol):
    """Enough HTTP/1.1 for keep-alive POSTs with Content-Length bodies."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(
                    head[
                        at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None
                    ].strip()
                )
            total = head_end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            self.transport.write(RESPONSE)


def serve() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Http, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    try:
        import uvloop  # optional: a faster server loop if present

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# ---- measurement -----------------------------------------------------------------

Call = Callable[[int], Awaitable[Any]]


async def concurrent(call: Call, total: int) -> float:
    """calls/s with CONCURRENCY workers sharing `total` calls."""
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - start)


_UNIQUE = itertools.count()


def messages(i: int) -> list[dict[str, str]]:
    # a prompt never sent before: no cache tier or coalescer can answer for the provider
    return [{"role": "user", "content": f"question {i}-{next(_UNIQUE)}"}]


async def build_clients(
    base_url: str,
) -> tuple[dict[str, Call], list[Callable[[], Awaitable[Any]]]]:
    import aiohttp
    import openai
    from modelherd import Herd
    from modelherd.config import HerdConfig, builtin_defaults
    from modelherd.plugins.providers import openai as openai_provider

    clients: dict[str, Call] = {}
    closers: list[Callable[[], Awaitable[Any]]] = []

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    closers.append(session.close)
    payload_url = f"{base_url}/chat/completions"

    async def raw_aiohttp(i: int) -> Any:
        async with session.post(
            payload_url,
            json={"model": "bench-model", "messages": messages(i)},
            headers={"Authorization": "Bearer sk-bench"},
        ) as r:
            return json.loads(await r.read())["choices"][0]["message"]["content"]

    clients["raw aiohttp POST"] = raw_aiohttp

    for transport in ("httpx", "aiohttp"):
        http_client = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
        sdk = openai.AsyncOpenAI(
            api_key="sk-bench", base_url=base_url, max_retries=0, http_client=http_client
        )
        closers.append(sdk.close)

        async def sdk_call(i: int, sdk: Any = sdk) -> Any:
            r = await sdk.chat.completions.create(model="bench-model", messages=messages(i))
            return r.choices[0].message.content

        clients[f"openai SDK ({transport})"] = sdk_call

    # the same SDK client the way the provider calls it: client.post, no param transform.
    # herd.chat minus this one is what the kernel and the adapter add.
    from openai.types.chat import ChatCompletion

    bare = openai.AsyncOpenAI(
        api_key="sk-bench",
        base_url=base_url,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    closers.append(bare.close)

    async def sdk_post(i: int) -> Any:
        r = await bare.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body={"model": "bench-model", "messages": messages(i)},
        )
        return r.choices[0].message.content

    clients["openai SDK client.post (aiohttp)"] = sdk_post

    env = {"OPENAI_API_KEY": "sk-bench"}
    for label, entry_points in (("openai plugin only", False), ("all default plugins", True)):
        for transport in ("httpx", "aiohttp"):
            data = builtin_defaults()
            data.setdefault("models", {})["bench"] = {
                "provider": "openai",
                "model": "bench-model",
                "base_url": base_url,
                "transport": transport,
            }
            config = HerdConfig.model_validate(data)
            plugins = () if entry_points else (openai_provider,)
            herd = Herd(config, env=env, load_entry_points=entry_points, plugins=plugins)
            await herd.start()
            closers.append(herd.aclose)

            async def herd_call(i: int, herd: Any = herd) -> Any:
                return (await herd.chat("bench", messages(i))).content

            clients[f"herd.chat, {label} ({transport})"] = herd_call

    if importlib.util.find_spec("litellm") is not None:
        # litellm fetches a model price list from the internet at import unless told
        # not to; the benchmark talks to 127.0.0.1 only
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        async def litellm_call(i: int) -> Any:
            r = await litellm.acompletion(
                model="openai/bench-model",
                messages=messages(i),
                api_base=base_url,
                api_key="sk-bench",
                num_retries=0,
            )
            return r.choices[0].message.content

        clients["litellm.acompletion"] = litellm_call
    return clients, closers


async def run(port: int, quick: bool) -> dict[str, Any]:
    base_url = f"http://127.0.0.1:{port}/v1"
    clients, closers = await build_clients(base_url)
    rounds, per_round = (2, 50) if quick else (5, 100)
    total_conc = 300 if quick else 800
    try:
        for call in clients.values():  # warm-up: connections, imports, first-call paths
            for i in range(30):
                await call(i)
        # sequential: calls alternate between clients one by one, so a noisy neighbour
        # (2 shared cores here) slows every client alike instead of whichever ran then
        seq: dict[str, list[float]] = {name: [] for name in clients}
        for i in range(rounds * per_round):
            for name, call in clients.items():
                start = time.perf_counter()
                await call(i)
                seq[name].append(time.perf_counter() - start)
        # concurrency 64: each client in turn, twice; the better run counts
        conc: dict[str, float] = {name: 0.0 for name in clients}
        for _ in range(2):
            for name, call in clients.items():
                conc[name] = max(conc[name], await concurrent(call, total_conc))
    finally:
        for close in closers:
            await close()
    return {
        name: {"p50_us": statistics.median(seq[name]) * 1e6, "calls_per_s": conc[name]}
        for name in clients
    }


def report(results: dict[str, Any]) -> None:
    print(f"\n{'client':<48}{'p50 (µs)':>10}{'calls/s @64':>14}")
    for name, r in results.items():
        print(f"{name:<48}{r['p50_us']:>10.0f}{r['calls_per_s']:>14.0f}")
    print("\nratios (same run):")
    for transport in ("httpx", "aiohttp"):
        sdk = results[f"openai SDK ({transport})"]
        for label in ("openai plugin only", "all default plugins"):
            herd = results[f"herd.chat, {label} ({transport})"]
            added = (herd["p50_us"] / sdk["p50_us"] - 1) * 100
            print(
                f"  herd ({label}, {transport}) vs SDK ({transport}): p50 {added:+.1f}% "
                f"({herd['p50_us'] - sdk['p50_us']:+.0f} µs), calls/s "
                f"{herd['calls_per_s'] / sdk['calls_per_s']:.2f}x"
            )
    post = results["openai SDK client.post (aiohttp)"]
    for label in ("openai plugin only", "all default plugins"):
        herd = results[f"herd.chat, {label} (aiohttp)"]
        print(
            f"  herd ({label}, aiohttp) vs the same SDK call it makes (client.post): p50 "
            f"{(herd['p50_us'] / post['p50_us'] - 1) * 100:+.1f}% "
            f"({herd['p50_us'] - post['p50_us']:+.0f} µs = kernel + adapter), calls/s "
            f"{herd['calls_per_s'] / post['calls_per_s']:.2f}x"
        )
    default_sdk = results["openai SDK (httpx)"]
    herd_best = results["herd.chat, all default plugins (aiohttp)"]
    print(
        f"  herd (all plugins, aiohttp = provider default) vs SDK with its default httpx: "
        f"p50 {(herd_best['p50_us'] / default_sdk['p50_us'] - 1) * 100:+.1f}%, calls/s "
        f"{herd_best['calls_per_s'] / default_sdk['calls_per_s']:.2f}x"
    )
    print(
        f"  SDK transport: aiohttp vs httpx calls/s "
        f"{results['openai SDK (aiohttp)']['calls_per_s'] / default_sdk['calls_per_s']:.2f}x, p50 "
        f"{results['openai SDK (aiohttp)']['p50_us'] / default_sdk['p50_us']:.2f}x"
    )
    if "litellm.acompletion" in results:
        lite = results["litellm.acompletion"]
        print(
            f"  herd vs litellm: calls/s {herd_best['calls_per_s'] / lite['calls_per_s']:.2f}x, "
            f"p50 {herd_best['p50_us'] / lite['p50_us']:.2f}x"
        )
    else:
        print('  litellm not installed — skipped (pip install "modelherd[bench]" to compare)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer calls (smoke run)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        results = asyncio.run(run(port, args.quick))
    finally:
        server.terminate()
        server.wait(5)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    print(f"\ntotal {time.perf_counter() - started:.1f}s, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
