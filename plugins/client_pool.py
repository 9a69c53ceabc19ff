"""One SDK client (and so one connection pool) per provider, endpoint and key, per loop.

SDK clients hold sockets bound to the event loop that opened them, so the pool is
keyed by the running loop too: `herd.chat_sync` and a test's own loop each get their
own client instead of a broken shared one. Clients are made lazily on first use and
closed by the plugins' `shutdown` hook (`await herd.aclose()`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Any


class ClientPool:
    def __init__(self) -> None:
        self._clients: dict[tuple[int, Hashable], tuple[weakref.ref[Any], Any]] = {}

    def get(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        entry = self._clients.get(slot)
        if entry is not None and entry[0]() is loop:
            return entry[1]
        client = factory()
        self._clients[slot] = (weakref.ref(loop), client)
        return client

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose_current_loop(self) -> None:
        """Close the clients opened in the running loop (others belong to other loops)."""
        loop = asyncio.get_running_loop()
        for slot, (ref, client) in list(self._clients.items()):
            owner = ref()
            if owner is None or owner.is_closed():
                self._clients.pop(slot, None)  # its loop is gone; sockets went with it
            elif owner is loop:
                self._clients.pop(slot, None)
                close = getattr(client, "close", None) or client.aclose
                await close()
