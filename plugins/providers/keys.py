"""API-key lookup shared by the cloud providers.

Keys come from `herd.env` (the environment over `.env`, merged by the kernel). Older
trading-agent .env files use shorter names (ANTHROPIC_KEY, GROK_API_KEY …); we accept
them and say once per process which standard name to rename them to. The key value
itself is never logged, formatted into a message, or kept anywhere but the SDK client.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

log = logging.getLogger("modelherd.keys")

#: legacy names already hinted about in this process (one hint each, not one per call)
_HINTED: set[str] = set()


def find_key(
    env: Mapping[str, str], standard: tuple[str, ...], legacy: tuple[str, ...] = ()
) -> tuple[str | None, str | None]:
    """(key, the variable it came from); (None, None) when no variable is set."""
    for name in standard:
        value = env.get(name)
        if value:
            return value, name
    for name in legacy:
        value = env.get(name)
        if value:
            if name not in _HINTED and standard:
                _HINTED.add(name)
                log.warning(
                    "%s is an old name; rename it to %s (both work for now)", name, standard[0]
                )
            return value, name
    return None, None


def key_fingerprint(key: str | None) -> str:
    """A short digest that tells two keys apart (client pool key) without holding them."""
    if not key:
        return "-"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every given secret (and anything shaped like an API key) masked.

    Vendors echo part of a rejected key in 401 bodies ("Incorrect API key provided:
    sk-ab***"); that text goes into our error messages, so it is scrubbed first.
    """
    import re

    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return re.sub(r"\b(sk|xai|gsk|sk-ant|AIza)[-_A-Za-z0-9*]{6,}", "***", text)
