"""Run ids: the calls one agent run makes (a swarm's members, a trading decision, an
rbi loop) share an id, so the call log can show them together (`herd logs --run ID`).

The id lives in a ContextVar: tasks an agent starts inside its run (anyio task
groups, asyncio.gather) inherit it, and a run started inside another run keeps the
outer id. `Agent.run` opens a scope by itself; scripts may open their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_RUN_ID: ContextVar[str | None] = ContextVar("herd_run_id", default=None)


#: the id of the run the current task belongs to, or None outside any run — the
#: ContextVar's own `get` (C), as the call log asks it on every call
current_run: Callable[[], str | None] = _RUN_ID.get


@contextmanager
def run_scope(kind: str) -> Iterator[str]:
    """Enter a run named `<kind>-<random hex>` (or stay in the enclosing run)."""
    outer = _RUN_ID.get()
    if outer is not None:
        yield outer
        return
    token = _RUN_ID.set(f"{kind}-{os.urandom(6).hex()}")
    try:
        yield _RUN_ID.get() or ""
    finally:
        _RUN_ID.reset(token)
