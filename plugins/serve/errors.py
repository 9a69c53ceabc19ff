"""Errors as each vendor's clients expect them, and the HTTP status of each HerdError.

OpenAI: `{"error": {"message", "type", "param", "code"}}`; Anthropic:
`{"type": "error", "error": {"type", "message"}}`; Ollama: `{"error": "message"}`.
The official SDKs map the status to their error classes (401 AuthenticationError,
403 PermissionDeniedError, 429 RateLimitError …), so the status matters most.
"""

from __future__ import annotations

import math
from typing import Literal

from aiohttp import web
from modelherd import errors as herd_errors
from modelherd.plugins.serve.auth import Refusal
from modelherd.plugins.serve.jsonio import json_response

Dialect = Literal["openai", "anthropic", "ollama"]

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    501: "api_error",
    503: "overloaded_error",
}
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def refusal_for(exc: BaseException) -> Refusal:
    """The HTTP answer for an error raised by the pipeline (no secrets: messages are ours)."""
    if isinstance(exc, Refusal):
        return exc
    message = str(exc)
    retry = getattr(exc, "retry_after", None)
    if isinstance(exc, herd_errors.BudgetExceededError):
        return Refusal(429, "budget_exceeded", message, retry)
    if isinstance(exc, herd_errors.QuotaExceededError):
        if retry is None:  # a limit that never resets (allowed models, memory share)
            return Refusal(403, "model_not_allowed", message)
        return Refusal(429, "quota_exceeded", message, retry)
    if isinstance(exc, herd_errors.OverloadedError):
        return Refusal(503, "overloaded", message, retry if retry is not None else 1.0)
    if isinstance(exc, herd_errors.CircuitOpenError):
        return Refusal(503, "circuit_open", message, retry if retry is not None else 5.0)
    if isinstance(exc, herd_errors.UnknownModelError):
        return Refusal(404, "model_not_found", message)
    if isinstance(exc, herd_errors.BadRequestError):
        return Refusal(400, "bad_request", message)
    if isinstance(exc, herd_errors.ConfigError):
        return Refusal(500, "gateway_config", message)
    if isinstance(exc, herd_errors.RateLimitError):
        return Refusal(429, "upstream_rate_limited", message, retry if retry is not None else 1.0)
    if isinstance(exc, herd_errors.CallTimeoutError):
        return Refusal(504, "upstream_timeout", message)
    if isinstance(exc, herd_errors.AllModelsFailedError):
        last = exc.errors[-1][1] if exc.errors else None
        if isinstance(last, herd_errors.HerdError) and not isinstance(
            last, herd_errors.AllModelsFailedError
        ):
            inner = refusal_for(last)
            return Refusal(inner.status, inner.code, message, inner.retry_after)
        return Refusal(502, "upstream_failed", message)
    if isinstance(exc, herd_errors.HerdError):
        return Refusal(502, "upstream_failed", message)
    return Refusal(500, "internal_error", f"the gateway failed: {type(exc).__name__}")


def error_body(dialect: Dialect, refusal: Refusal) -> dict[str, object]:
    status = refusal.status
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": refusal.message}}
    if dialect == "ollama":
        return {"error": refusal.message}
    kind = _OPENAI_TYPES.get(status, "server_error")
    return {
        "error": {"message": refusal.message, "type": kind, "param": None, "code": refusal.code}
    }


def retry_headers(refusal: Refusal) -> dict[str, str]:
    if refusal.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(refusal.retry_after)))}


def error_response(dialect: Dialect, refusal: Refusal) -> web.Response:
    return json_response(
        error_body(dialect, refusal), status=refusal.status, headers=retry_headers(refusal)
    )
