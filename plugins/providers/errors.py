"""HTTP status and vendor error bodies -> the kernel's typed errors.

Every cloud provider funnels its failures through `status_error`, so a 429 means
the same thing (RateLimitError with `retry_after`) whichever vendor sent it, and the
kernel's one retry policy can decide. Messages name variables, never values.
"""

from __future__ import annotations

import difflib
import email.utils
import socket
import time
from collections.abc import Iterable, Mapping

from modelherd.errors import (
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    CallTimeoutError,
    ConnectionDroppedError,
    ConnectionFailedError,
    ConnectionRefusedByServerError,
    HerdError,
    HostNotFoundError,
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


#: exception class names (anywhere in the cause chain) meaning the server was reached but
#: the answer broke off: a reset, or a body shorter than announced (aiohttp, httpx, h11)
_SHORT_BODY = frozenset(
    {
        "ContentLengthError",
        "ClientPayloadError",
        "TransferEncodingError",
        "RemoteProtocolError",
        "IncompleteRead",
        "ServerDisconnectedError",
    }
)
_RESET = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it was raised from or during, outermost first."""
    seen: set[int] = set()
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def transport_error(
    exc: BaseException, name: str, alias: str, setting: str, *, refused: str | None = None
) -> HerdError | None:
    """The typed error for a transport failure anywhere in `exc`'s cause chain, or None.

    The SDKs' wrappers cannot be trusted for this: the vendored aiohttp transport
    reports a DNS failure, a refused and a reset connection all as a *timeout*
    (ConnectTimeout: its exception map matches ClientConnectionError first), and
    httpx calls both a DNS failure and a refusal ConnectError. So the real cause
    decides, in this order: DNS, refused, dropped (reset / short body), timeout, other.
    `name` says who was called ("OpenAI at http://…"), `setting` where its address is
    configured ("base_url in [models.gpt]"); `refused` replaces the refused message.
    """
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    for e in chain:
        if isinstance(e, socket.gaierror) or type(e).__name__ == "ClientConnectorDNSError":
            gai = next((c for c in chain if isinstance(c, socket.gaierror)), None)
            temporary = gai is not None and gai.errno == socket.EAI_AGAIN
            why = (gai.strerror if gai is not None else None) or "DNS lookup failed"
            error = HostNotFoundError(
                f"cannot resolve the host name of {name} ({why}) — check {setting} for a "
                f"typo, and that this machine's DNS works"
            )
            error.retryable = temporary
            return error
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return ConnectionRefusedByServerError(
            refused
            or f"nothing is listening at {name} (connection refused) — start the "
            f"server, or fix {setting}"
        )
    short = names & _SHORT_BODY
    if short:
        return ConnectionDroppedError(
            f"{name} sent an incomplete answer for '{alias}' (the connection closed before "
            f"the body ended: {sorted(short)[0]}) — the server was reached; the call can be "
            f"retried"
        )
    reset = next((e for e in chain if isinstance(e, _RESET)), None)
    if reset is not None:
        return ConnectionDroppedError(
            f"{name} closed the connection before answering '{alias}' "
            f"({type(reset).__name__}) — the server was reached; the call can be retried"
        )
    if any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
        return CallTimeoutError(
            f"{name} did not answer '{alias}' in time — "
            f"pass a larger timeout= or set [models.{alias}] timeout"
        )
    transport = next(
        (
            e
            for e in chain
            if isinstance(e, OSError)
            or type(e).__module__.split(".")[0] in _TRANSPORT_MODULES
            or type(e).__name__ == "APIConnectionError"
        ),
        None,
    )
    if transport is not None:
        return ConnectionFailedError(
            f"the connection to {name} failed ({type(chain[-1]).__name__}) — check the "
            f"network and {setting}; the call can be retried"
        )
    return None


_TRANSPORT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "aiohttp", "h11"})


def unfinished(vendor: str, base_url: str, alias: str, sign: str) -> BadResponseError:
    """A well-formed 200 whose answer is not finished (`sign` says how it showed, e.g.
    "finish_reason null"): it may be cut off, so it is retried and never returned as
    complete nor cached."""
    return BadResponseError(
        f"{vendor} at {base_url} answered '{alias}' without finishing ({sign}) — "
        f"the answer may be cut off, so it is not used; the call can be retried"
    )


def as_health(error: HerdError, latency: float | None = None) -> Health:
    """A typed error as a failed health check: what went wrong, then the fix."""
    detail, _, fix = error.message.rpartition(" — ")
    return Health(ok=False, detail=detail or fix, fix=fix if detail else "", latency_s=latency)
