"""HTTP status and vendor error bodies -> the kernel's typed errors.

Every cloud provider funnels its failures through `status_error`, so a 429 means
the same thing (RateLimitError with `retry_after`) whichever vendor sent it, and the
kernel's one retry policy can decide. Messages name variables, never values.
"""

from __future__ import annotations

import difflib
import email.utils
import time
from collections.abc import Iterable, Mapping
from typing import Any

from modelherd.errors import (
    AuthenticationError,
    BadRequestError,
    CallTimeoutError,
    ConnectionFailedError,
    HerdError,
    ModelNotFoundError,
    ProviderError,
    RateLimitError,
)
from modelherd.plugins.providers.keys import redact
from modelherd.types import Health


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date)."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):  # neither seconds nor an HTTP date: ignore it
        return None
    return max(parsed.timestamp() - time.time(), 0.0)


def close_names(model: str, offered: Iterable[str], n: int = 3) -> list[str]:
    names = list(dict.fromkeys(offered))
    close = difflib.get_close_matches(model, names, n=n, cutoff=0.4)
    if not close:  # same family prefix ("gpt-", "claude-") beats nothing
        stem = model.split("-")[0].split(":")[0]
        close = [name for name in names if name.startswith(stem)][:n]
    return close


def model_not_found(
    provider: str, alias: str, model: str, offered: Iterable[str] | None, fix: str | None = None
) -> ModelNotFoundError:
    hint = ""
    if offered is not None:
        close = close_names(model, offered)
        hint = (
            f" — close names it offers: {', '.join(close)}"
            if close
            else " — it offers none with a similar name"
        )
    fix = fix or f'set model = "..." in [models.{alias}] to one the provider lists'
    return ModelNotFoundError(f"{provider} has no model '{model}'{hint} — {fix}")


def status_error(
    status: int,
    detail: str,
    *,
    provider: str,
    alias: str,
    model: str,
    key_var: str | None,
    headers: Mapping[str, str] | None = None,
    offered: Iterable[str] | None = None,
    secret: str | None = None,
) -> HerdError:
    """The typed error for an HTTP error status from `provider`."""
    detail = redact(" ".join(str(detail).split()), secret)[:300] or f"HTTP {status}"
    where = f"{provider} (HTTP {status}: {detail})"
    if status in (401, 403):
        var = key_var or "the API key variable"
        verb = "refused" if status == 401 else "does not permit"
        return AuthenticationError(
            f"{provider} {verb} the API key in {var} (HTTP {status}: {detail}) — "
            f"check {var} in the environment or .env"
        )
    if status == 404:
        return model_not_found(provider, alias, model, offered)
    if status in (429, 529):
        retry_after = parse_retry_after(headers)
        when = f"retry after {retry_after:g}s" if retry_after is not None else "retry later"
        what = "is overloaded" if status == 529 else "rate-limited the call"
        return RateLimitError(
            f"{provider} {what} for '{alias}' (HTTP {status}: {detail}) — {when}; "
            f"the kernel retries automatically, or add a fallback to [models.{alias}]",
            retry_after=retry_after,
        )
    if status == 408:
        return CallTimeoutError(f"{where} timed out the request — try again or raise timeout")
    if status in (400, 409, 413, 422):
        return BadRequestError(f"{where} rejected the request — fix the options or messages")
    if status >= 500:
        return ProviderError(
            f"{where} failed on its side — the kernel retries; if it persists, check the "
            f"vendor's status page or add a fallback to [models.{alias}]",
            retry_after=parse_retry_after(headers),
        )
    error = ProviderError(f"{where} refused the call — see the message above")
    error.retryable = False
    return error


def connect_failure(exc: BaseException) -> str | None:
    """The name of a refused/reset connection in `exc`'s cause chain, else None.

    The SDKs' vendored aiohttp transport reports a refused connection as a *timeout*
    (ConnectTimeout: its exception map matches ClientConnectionError first), so we
    look at the real cause instead of the wrapper's class.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError) or type(current).__name__ == "ClientConnectorError":
            return type(current).__name__
        current = current.__cause__ or current.__context__
    return None


def sdk_connection_error(exc: BaseException, sdk: Any, name: str, alias: str) -> HerdError | None:
    """A refused connection, a timeout or a connection error from a Stainless-generated
    SDK (`openai`, `anthropic`: same APITimeoutError / APIConnectionError classes) as
    the kernel's typed error; None when `exc` is none of those. `name` says who was
    called ("OpenAI at https://…"), `alias` is the model alias the call was for."""
    refused = connect_failure(exc)
    if refused is not None:
        return ConnectionFailedError(
            f"cannot reach {name} ({refused}) — check the network, or base_url in [models.{alias}]"
        )
    if isinstance(exc, sdk.APITimeoutError):
        return CallTimeoutError(
            f"{name} did not answer '{alias}' in time — "
            f"pass a larger timeout= or set [models.{alias}] timeout"
        )
    if isinstance(exc, sdk.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        return ConnectionFailedError(
            f"cannot reach {name} ({cause}) — check the network, or base_url in [models.{alias}]"
        )
    return None


def as_health(error: HerdError, latency: float | None = None) -> Health:
    """A typed error as a failed health check: what went wrong, then the fix."""
    detail, _, fix = error.message.rpartition(" — ")
    return Health(ok=False, detail=detail or fix, fix=fix if detail else "", latency_s=latency)
