"""HTTP errors from Ollama with their headers (imported with the `ollama` client).

The official client raises `ollama.ResponseError(text, status)` and drops the
response, so `Retry-After` on a 429/503 (a proxy's, or Ollama's own "server busy")
would be lost. An httpx response hook raises this subclass first, headers kept;
code that catches `ollama.ResponseError` still catches it.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import ollama


class StatusError(ollama.ResponseError):
    def __init__(self, text: str, status_code: int, headers: Mapping[str, str]) -> None:
        super().__init__(text, status_code)
        self.headers = {k.lower(): v for k, v in headers.items()}


async def raise_for_status(response: httpx.Response) -> None:
    """httpx `response` event hook: an error status becomes a StatusError."""
    if response.status_code >= 400:
        await response.aread()
        raise StatusError(response.text, response.status_code, response.headers)
