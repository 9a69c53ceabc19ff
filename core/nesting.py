"""Bounds on nested JSON-like values that reach recursive code (json, pydantic, the
cache key, grammar builders): a 5000-deep `response_format` used to surface as a raw
RecursionError from the cache key. Walked iteratively, so the check itself cannot
recurse too deep."""

from __future__ import annotations

from typing import Any

#: deeper than any real JSON schema or tool definition; far below Python's recursion limit
MAX_DEPTH = 64
#: containers and scalars counted in one value
MAX_ITEMS = 100_000


def too_deep(value: Any, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> str | None:
    """Why `value` is too nested or too big to hand to recursive code, else None."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > max_items:
            return f"has more than {max_items} items"
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            return f"is nested more than {max_depth} levels deep"
        stack.extend((child, depth + 1) for child in children)
    return None
