"""Tools and embeddings benchmark, against one fast loopback OpenAI-compatible server.

    .venv/bin/python bench/tools.py            # ~30 s on 2 cores
    .venv/bin/python bench/tools.py --quick    # a smoke run

1. Tool-call round trip: `herd.chat(..., tools=[fn])` (tool schema from the function,
   the call parsed and checked against it) vs the openai SDK alone
   (`chat.completions.create(tools=[<hand-written schema>])` + `json.loads` of the
   arguments). Sequential p50 latency, rounds interleaved so machine noise hits both
   alike; the ratio is herd / SDK.
2. Embeddings: 512 texts x 256 dimensions through `herd.embed` in one call (batches
   of 256) vs one `herd.embed` per text (sequential), and the SDK batched for
   reference; texts/s, the median of three interleaved rounds.
3. Embeddings on the embedded engine (xllamacpp, SmolLM2-135M in embedding mode, real
   inference in this process): 64 short texts through `herd.embed` in one call
   (batches of 32) vs one `herd.embed` per text; texts/s, the median of three
   interleaved rounds. Skipped (and said so) without xllamacpp or the SmolLM2 GGUF.

The server runs in its own process (asyncio, HTTP/1.1 keep-alive, canned bodies) so it
is never the bottleneck. No cache tier is registered: every call goes upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Literal

TOOL_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_price",
                                "arguments": '{"symbol": "BTC", "currency": "USD"}',
                            },
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 60, "completion_tokens": 12, "total_tokens": 72},
    }
).encode()
DIMS = 256


def _embeddings_body(count: int) -> bytes:
    vector = [0.001 * i for i in range(DIMS)]
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector} for i in range(count)
            ],
            "model": "bench-embed",
            "usage": {"prompt_tokens": 3 * count, "total_tokens": 3 * count},
        }
    ).encode()


# ---- the server (run with --serve, in its own process) ---------------------------


class _Http(asyncio.Protocol):
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
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body, self.buf = self.buf[head_end + 4 : end], self.buf[end:]
            if b"/embeddings" in head.split(b"\r\n", 1)[0]:
                inputs = json.loads(body)["input"]
                payload = _embeddings_body(len(inputs) if isinstance(inputs, list) else 1)
            else:
                payload = TOOL_COMPLETION
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_b\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# ---- the clients -------------------------------------------------------------------


def get_price(symbol: str, currency: Literal["USD", "EUR"] = "USD") -> float:
    """The last traded price of a symbol.

    Args:
        symbol: the ticker, e.g. "BTC"
        currency: the quote currency
    """
    return 97000.0


SDK_TOOL = {
    "type": "function",
    "function": {
        "name": "get_price",
        "description": "The last traded price of a symbol.",
        "parameters": {
            "type": "object",
            "properties": {
                "symbol": {"type": "string", "description": 'the ticker, e.g. "BTC"'},
                "currency": {"type": "string", "enum": ["USD", "EUR"], "default": "USD"},
            },
            "required": ["symbol"],
        },
    },
}


def _herd(port: int) -> Any:
    from modelherd import Herd
    from modelherd.config import HerdConfig
    from modelherd.plugins.providers import openai as openai_provider

    base = f"http://127.0.0.1:{port}/v1"
    config = HerdConfig.model_validate(
        {
            "herd": {"default_model": "m", "retries": 0, "timeout": 30},
            "models": {
                "m": {"provider": "openai_compatible", "model": "bench-model", "base_url": base},
                "e": {"provider": "openai_compatible", "model": "bench-embed", "base_url": base},
            },
        }
    )
    return Herd(config, env={}, load_entry_points=False, plugins=(openai_provider,))


async def _run(port: int, rounds: int, texts: int) -> dict[str, float]:
    import openai

    herd = _herd(port)
    await herd.start()
    sdk = openai.AsyncOpenAI(
        api_key="x",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    messages = [{"role": "user", "content": "What is BTC trading at?"}]

    async def via_herd() -> None:
        response = await herd.chat("m", "What is BTC trading at?", tools=[get_price])
        call = response.tool_calls[0]
        assert call.ok and call.arguments["symbol"] == "BTC"

    async def via_sdk() -> None:
        completion = await sdk.chat.completions.create(
            model="bench-model", messages=messages, tools=[SDK_TOOL]
        )
        call = completion.choices[0].message.tool_calls[0]
        assert json.loads(call.function.arguments)["symbol"] == "BTC"

    for _ in range(20):  # warm both: SDK import, pools, the tool's schema
        await via_herd()
        await via_sdk()
    herd_s: list[float] = []
    sdk_s: list[float] = []
    for _ in range(rounds):
        for fn, out in ((via_herd, herd_s), (via_sdk, sdk_s)):
            t0 = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - t0)

    corpus = [f"document number {i} about markets" for i in range(texts)]

    async def herd_batched() -> None:
        result = await herd.embed("e", corpus)
        assert len(result.vectors) == texts and result.dimensions == DIMS

    async def herd_one_by_one() -> None:
        for text in corpus:
            await herd.embed("e", text)

    async def sdk_batched() -> None:
        for i in range(0, texts, 256):
            await sdk.embeddings.create(
                model="bench-embed", input=corpus[i : i + 256], encoding_format="float"
            )

    embed_runs: dict[str, list[float]] = {"batched": [], "single": [], "sdk": []}
    await herd.embed("e", "warm")  # the SDK's embeddings resource loads on first use
    await sdk.embeddings.create(model="bench-embed", input=["warm"], encoding_format="float")
    for _ in range(3):  # interleaved rounds; the median of each
        for name, fn in (
            ("batched", herd_batched),
            ("single", herd_one_by_one),
            ("sdk", sdk_batched),
        ):
            t0 = time.perf_counter()
            await fn()
            embed_runs[name].append(time.perf_counter() - t0)
    batched_s = statistics.median(embed_runs["batched"])
    single_s = statistics.median(embed_runs["single"])
    sdk_batched_s = statistics.median(embed_runs["sdk"])
    await sdk.close()
    await herd.aclose()
    return {
        "herd_p50_ms": statistics.median(herd_s) * 1000,
        "sdk_p50_ms": statistics.median(sdk_s) * 1000,
        "batched_tps": texts / batched_s,
        "single_tps": texts / single_s,
        "sdk_batched_tps": texts / sdk_batched_s,
    }


async def _run_embedded(texts: int) -> dict[str, float] | None:
    import importlib.util

    from modelherd import Herd
    from modelherd.config import HerdConfig
    from modelherd.plugins.providers import llamacpp

    if importlib.util.find_spec("xllamacpp") is None or llamacpp.smollm2_path() is None:
        return None
    config = HerdConfig.model_validate(
        {
            "herd": {"retries": 0},
            "models": {"local": {"provider": "llamacpp", "model": "smollm2-135m-instruct"}},
        }
    )
    herd = Herd(config, env={}, load_entry_points=False, plugins=(llamacpp,))
    await herd.start()
    corpus = [f"document number {i} about markets and prices" for i in range(texts)]

    async def batched() -> None:
        result = await herd.embed("local", corpus)
        assert len(result.vectors) == texts

    async def one_by_one() -> None:
        for text in corpus:
            await herd.embed("local", text)

    await herd.embed("local", "warm")  # the embedding load happens here, not in a round
    runs: dict[str, list[float]] = {"batched": [], "single": []}
    for _ in range(3):
        for name, fn in (("batched", batched), ("single", one_by_one)):
            t0 = time.perf_counter()
            await fn()
            runs[name].append(time.perf_counter() - t0)
    await herd.aclose()
    return {
        "batched_tps": texts / statistics.median(runs["batched"]),
        "single_tps": texts / statistics.median(runs["single"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        rounds, texts = (100, 128) if args.quick else (500, 512)
        r = asyncio.run(_run(port, rounds, texts))
    finally:
        server.terminate()
        server.wait(5)
    ratio = r["herd_p50_ms"] / r["sdk_p50_ms"]
    print(f"tool-call round trip, p50 over {rounds} sequential calls (interleaved):")
    print(f"  openai SDK alone   {r['sdk_p50_ms']:7.3f} ms")
    print(f"  herd.chat(tools=)  {r['herd_p50_ms']:7.3f} ms   ratio herd/SDK = {ratio:.2f}")
    print(f"embeddings, {texts} texts x {DIMS} dims:")
    print(f"  herd.embed, one call (batches of 256)  {r['batched_tps']:9.0f} texts/s")
    print(f"  herd.embed, one call per text          {r['single_tps']:9.0f} texts/s")
    print(f"  openai SDK, batches of 256             {r['sdk_batched_tps']:9.0f} texts/s")
    print(f"  batched / one by one = {r['batched_tps'] / r['single_tps']:.1f}x")
    local_texts = 16 if args.quick else 64
    local = asyncio.run(_run_embedded(local_texts))
    if local is None:
        print("embedded engine embeddings: skipped (needs xllamacpp and the SmolLM2 GGUF)")
        return
    print(f"embedded engine embeddings (xllamacpp, SmolLM2-135M), {local_texts} short texts:")
    print(f"  herd.embed, one call (batches of 32)   {local['batched_tps']:9.0f} texts/s")
    print(f"  herd.embed, one call per text          {local['single_tps']:9.0f} texts/s")
    print(f"  batched / one by one = {local['batched_tps'] / local['single_tps']:.1f}x")


if __name__ == "__main__":
    main()
