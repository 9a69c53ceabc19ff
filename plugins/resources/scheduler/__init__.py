"""`scheduler`: load states (idle … critical), a bounded priority queue, and actions.

Off by default. The entry point stays light; scheduler_core.py holds the settings,
the queue and the actions and loads at startup, registering per-call hooks only when
`[plugins.scheduler] enabled = true`. docs/resources.md.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from modelherd import hookimpl

if TYPE_CHECKING:
    from modelherd.kernel import Herd


@hookimpl
def startup(herd: Herd) -> Awaitable[None] | None:
    if not herd.plugin_settings("scheduler"):
        return None  # nothing configured: off, and not even the core module is imported
    from modelherd.plugins.resources.scheduler.runtime import start

    return start(herd)


@hookimpl
def shutdown(herd: Herd) -> Awaitable[None] | None:
    if "_scheduler_plugin" not in herd.__dict__:
        return None
    from modelherd.plugins.resources.scheduler.runtime import stop

    return stop(herd)
