"""What a member answered: the JSON schema we ask for, and a robust parser.

Models that support structured output get the schema (llama.cpp turns it into a
grammar, so the JSON parses by construction); the others get the same shape in the
prompt, and `parse_answer` digs it out of whatever text came back. An answer that
cannot be read is a `ParseError`, and a ParseError is never a vote.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelherd.nesting import too_deep

LABEL_KEYS = ("answer", "action", "label", "decision", "verdict")


class ParseError(ValueError):
    """The answer has no usable label; the message says what was wrong."""


@dataclass(slots=True)
class ParsedAnswer:
    label: str
    confidence: float | None
    reasoning: str
    extra: dict[str, Any]


def answer_schema(
    labels: Sequence[str] | None, label_key: str = "answer", reasoning_chars: int = 160
) -> dict[str, Any]:
    """The JSON schema of one answer: a label (an enum when labels are known), a
    confidence and a short reasoning."""
    label: dict[str, Any] = (
        {"type": "string", "enum": list(labels)} if labels else {"type": "string", "maxLength": 80}
    )
    return {
        "type": "object",
        "properties": {
            label_key: label,
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            # bounded so a chatty model cannot run out of tokens mid-JSON
            "reasoning": {"type": "string", "maxLength": reasoning_chars},
        },
        "required": [label_key, "confidence", "reasoning"],
    }


def format_instructions(labels: Sequence[str] | None, label_key: str = "answer") -> str:
    choice = " | ".join(f'"{lab}"' for lab in labels) if labels else '"<short answer>"'
    return (
        f'Reply with JSON only: {{"{label_key}": {choice}, "confidence": <number 0 to 1>, '
        f'"reasoning": "<one short sentence>"}}'
    )


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_CONFIDENCE = re.compile(r"confidence\W{0,3}\s*([0-9]*\.?[0-9]+)\s*(%?)", re.IGNORECASE)


#: an answer is a label, a confidence and a sentence: past this, only the start is read
MAX_ANSWER_CHARS = 64_000


def json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model's text (whole, fenced, or between braces), or
    None. Bounded: long text is cut, deep nesting (`[[[…]]]`) is not an object."""
    text = text[:MAX_ANSWER_CHARS]
    candidates = [text]
    candidates += [m.group(1) for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate.strip())
        except (ValueError, RecursionError):  # RecursionError: nested past the C stack
            continue
        if isinstance(value, dict) and too_deep(value) is None:
            return value
    return None


def _confidence(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip().rstrip("%"))
    except ValueError:
        raise ParseError(f"confidence {value!r} is not a number") from None
    if 1.0 < number <= 100.0:  # "85" or "85%": a percentage
        number /= 100.0
    if not 0.0 <= number <= 1.0:
        raise ParseError(f"confidence {value!r} is outside 0..1")
    return number


def _canonical(label: str, labels: Sequence[str] | None) -> str:
    cleaned = label.strip().strip(".!\"'").strip()
    if not cleaned:
        raise ParseError("the answer is empty")
    if not labels:
        return cleaned[:80]
    for known in labels:
        if cleaned.lower() == known.lower():
            return known
    raise ParseError(f"'{cleaned[:40]}' is not one of {', '.join(labels)}")


def parse_answer(
    text: str, labels: Sequence[str] | None = None, label_keys: Sequence[str] = LABEL_KEYS
) -> ParsedAnswer:
    """Read a label, a confidence (0..1 or None) and a reasoning from a model's text."""
    if not text or not text.strip():
        raise ParseError("the answer is empty")
    obj = json_object(text)
    if obj is None and _looks_like_json(text):
        # a cut-off or broken JSON answer ("{", '{"answer": "BU') is no vote: read as
        # text, its first line would be counted as a label
        raise ParseError("the JSON answer is cut off or invalid")
    if obj is not None:
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for key in label_keys:
            if key in lowered and isinstance(lowered[key], str | int | float):
                label = _canonical(str(lowered[key]), labels)
                reasoning = str(lowered.get("reasoning") or lowered.get("reason") or "")
                extra = {
                    k: v
                    for k, v in obj.items()
                    if str(k).lower() not in (key, "confidence", "reasoning", "reason")
                }
                return ParsedAnswer(label, _confidence(lowered.get("confidence")), reasoning, extra)
        raise ParseError(f"the JSON has none of the keys {', '.join(label_keys)}")
    # plain text: usable only when it names exactly one of the known labels
    if not labels:
        first = next(line for line in text.strip().splitlines() if line.strip())
        return ParsedAnswer(_canonical(first, None), _text_confidence(text), text.strip(), {})
    found = {lab for lab in labels if re.search(rf"\b{re.escape(lab)}\b", text, re.IGNORECASE)}
    if len(found) != 1:
        what = "none" if not found else "more than one"
        raise ParseError(f"the text names {what} of {', '.join(labels)}")
    return ParsedAnswer(found.pop(), _text_confidence(text), text.strip(), {})


def _looks_like_json(text: str) -> bool:
    """The answer starts as JSON (an object, or a fenced block) — it was meant to be one."""
    head = text.lstrip()
    return head.startswith(("{", "[", "```"))


def _text_confidence(text: str) -> float | None:
    match = _CONFIDENCE.search(text)
    if not match:
        return None
    try:
        return _confidence(match.group(1) + match.group(2))
    except ParseError:
        return None


def vote_key(label: str) -> str:
    """Free-text answers vote together when they match case- and space-insensitively."""
    return " ".join(label.lower().split())
