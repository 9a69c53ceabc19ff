"""One SDK client (and so one connection pool) per provider, endpoint and key, per loop —
and per Herd: each Herd keeps its own pools in `herd.stash` (see `pool_of`), so one
Herd's shutdown never closes the clients another Herd on the same loop is using.

SDK clients hold sockets bound to the event loop that opened them, so the pool is
keyed by the running loop too: `herd.chat_sync` and a test's own loop each get their
own client instead of a broken shared one. Clients are made lazily on first use.
A client is closed when the last model using it is closed (`Model.aclose`, which
`herd.aclose()` and residency eviction call) or by the plugins' `shutdown` hook.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from modelherd.stash import StashKey


class _Entry:
    __slots__ = ("client", "loop", "owners")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        self.loop = weakref.ref(loop)
        self.client = client
        self.owners: set[int] = set()


def pool_of(herd: Any, key: StashKey[ClientPool]) -> ClientPool:
    """The pool `herd` keeps under `key` (one key per provider module), made on first use."""
    pool = herd.stash.get(key, None)
    if pool is None:
        pool = herd.stash[key] = ClientPool()
    return pool


class ClientPool:
    def __init__(self) -> None:
        self._entries: dict[tuple[int, Hashable], _Entry] = {}

    def get(self, key: Hashable, factory: Callable[[], Any], owner: object | None = None) -> Any:
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        entry = self._entries.get(slot)
        if entry is None or entry.loop() is not loop:
            entry = self._entries[slot] = _Entry(loop, factory())
        if owner is not None:
            entry.owners.add(id(owner))
        return entry.client

    def __len__(self) -> int:
        return len(self._entries)

    async def release(self, owner: object) -> None:
        """`owner` is done: close the clients in this loop nobody else uses."""
        loop = asyncio.get_running_loop()
        for slot, entry in list(self._entries.items()):
            if id(owner) not in entry.owners:
                continue
            entry.owners.discard(id(owner))
            if not entry.owners and entry.loop() is loop:
                self._entries.pop(slot, None)
                await _close(entry.client)

    async def aclose_current_loop(self) -> None:
        """Close the clients opened in the running loop (others belong to other loops)."""
        loop = asyncio.get_running_loop()
        for slot, entry in list(self._entries.items()):
            owner = entry.loop()
            if owner is None or owner.is_closed():
                self._entries.pop(slot, None)  # its loop is gone; sockets went with it
            elif owner is loop:
                self._entries.pop(slot, None)
                await _close(entry.client)


async def _close(client: Any) -> None:
    close = getattr(client, "close", None) or client.aclose
    await close()
