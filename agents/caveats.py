"""The honest footer every decision printed by an agent carries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelherd import Herd

EMBEDDED_NOTE = (
    "SmolLM2-135M, a pipeline demo with no market judgment — its answers are "
    "close to random; not advice"
)
GENERAL_NOTE = "language-model output, not financial advice"


def is_embedded_demo(herd: Herd, alias: str) -> bool:
    """True when `alias` is served by the bundled SmolLM2-135M."""
    try:
        spec = herd.resolve(alias)
    except Exception:
        return False
    return spec.provider == "llamacpp" and spec.model in ("", "smollm2-135m-instruct")


def model_note(herd: Herd, aliases: Iterable[str]) -> str:
    names = sorted(set(aliases))
    embedded = [a for a in names if is_embedded_demo(herd, a)]
    listed = ", ".join(names) or "none"
    if embedded:
        return f"model: {listed} ({EMBEDDED_NOTE})"
    return f"model: {listed} ({GENERAL_NOTE})"
