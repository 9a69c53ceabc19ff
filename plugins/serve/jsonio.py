"""JSON out of the gateway: orjson (the `serve` extra installs it), else the standard library.

Every answer, stream chunk and embedding leaves through `dumps`. Measured on the
2-core box (bench/gateway.py's gateway section in docs/performance.md): a chat
completion object 21 µs with `json.dumps` vs 1 µs, one stream chunk 16 µs vs 0.9 µs,
16 embeddings of 1536 floats 46 ms vs 1.8 ms.

What orjson refuses (an integer past 64 bits, a non-string key) falls back to the
standard library, so nothing it cannot write faithfully is written differently.
Request bodies are parsed with the standard library on purpose: orjson turns an
integer past 64 bits into a float without a word, and a request must reach the model
as it was sent.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

try:
    import orjson
except ImportError:  # pragma: no cover - the serve extra installs it
    orjson = None  # type: ignore[assignment]


def _stdlib(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    if orjson is not None:
        try:
            return orjson.dumps(obj)
        except TypeError:
            pass
    return _stdlib(obj)


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """`web.json_response` with `dumps` (aiohttp's default encoder is `json.dumps`)."""
    return web.Response(
        body=dumps(obj), status=status, headers=headers, content_type="application/json"
    )
