"""The one retry policy: which errors deserve another try, and how long to wait."""

from __future__ import annotations

import random

from .errors import HerdError


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog's recommendation):
    spreading retries uniformly avoids synchronised retry storms after an outage."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def retry_delay(error: HerdError, attempt: int, base: float, cap: float) -> float | None:
    """Seconds to wait before the next attempt, or None when retrying is pointless.

    A Retry-After longer than `cap` is not waited for: the fallback chain (or the
    caller, who sees `error.retry_after`) is a better use of that time.
    """
    if not error.retryable:
        return None
    if error.retry_after is not None:
        return error.retry_after if error.retry_after <= cap else None
    return backoff_delay(attempt, base, cap)
