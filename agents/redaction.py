"""Scrub secrets from text an agent sends to a model or saves (debug prompts, errors,
result.json).

Three nets, because a key can arrive by any of them: the values of environment
variables whose names say they hold a secret (a loaded .env lands there too),
`NAME=value` / `"name": "value"` pairs whose name says so, and the shapes of common
vendor keys (sk-…, sk-ant-…, AKIA…, ghp_…, xox?-…, hf_…, Bearer …).
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "[redacted]"

_SECRET_NAME = re.compile(
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|AUTH|SESSION|COOKIE|PRIVATE)",
    re.IGNORECASE,
)
#: values shorter than this are not scrubbed by value (too many false hits: "1", "on")
_MIN_VALUE = 8

_KEY_SHAPES = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|AKIA[0-9A-Z]{16}|"
    r"gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}|hf_[A-Za-z0-9]{20,}|"
    r"(?i:bearer)\s+[A-Za-z0-9._~+/\-]{12,}=*)"
)
_PAIR = re.compile(
    r"""(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)(?P<sep>["']?\s*[:=]\s*["']?)(?P<value>[^\s"',;]{4,})"""
)

#: names of `NAME=value` pairs that hold secrets: env-style capitals, or the usual
#: lowercase spellings (not `key=` or `max_tokens=`, which code is full of)
_PAIR_NAME = re.compile(
    r"[A-Z0-9_]*(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)[A-Z0-9_]*|"
    r"(?i:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password|passwd|"
    r"client[_-]?secret|private[_-]?key)"
)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names mark them as secrets, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_VALUE}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, extra: list[str] | None = None) -> str:
    """`text` with every secret it contains replaced by [redacted]."""
    if not text:
        return text
    for value in [*(extra or []), *secret_values()]:
        if value and value in text:
            text = text.replace(value, REDACTED)
    text = _KEY_SHAPES.sub(REDACTED, text)

    def pair(match: re.Match[str]) -> str:
        if _PAIR_NAME.fullmatch(match["name"]) and match["value"] != REDACTED:
            return f"{match['name']}{match['sep']}{REDACTED}"
        return match.group(0)

    return _PAIR.sub(pair, text)


def scrub_tree(data: Any) -> Any:
    """Every string in a JSON-shaped value scrubbed (dict keys included)."""
    if isinstance(data, str):
        return scrub(data)
    if isinstance(data, dict):
        return {scrub_tree(k): scrub_tree(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [scrub_tree(v) for v in data]
    return data
