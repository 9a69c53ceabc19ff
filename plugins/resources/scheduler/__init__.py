"""`scheduler`: load states (idle … critical), a bounded priority queue, and actions.

Off by default. The entry point stays light; runtime.py holds the settings,
the queue and the actions and loads at startup, registering per-call hooks only when
`[plugins.scheduler] enabled = true`. docs/resources.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.stash import StashKey

if TYPE_CHECKING:
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.scheduler.runtime import Scheduler


#: this Herd's running scheduler (set by runtime.start, read at shutdown); the key lives
#: here so that shutdown can test for it without importing the runtime module
RUNTIME: StashKey[Scheduler] = StashKey()


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("scheduler", _check_settings, "docs/resources.md")


def _check_settings(table: dict[str, Any], source: str) -> object:
    # runtime.py is imported only when there is a table to check (it is not light)
    from modelherd.config import validate_table
    from modelherd.plugins.resources.scheduler.runtime import SchedulerSettings

    return validate_table(
        SchedulerSettings, table, f"{source}: [plugins.scheduler]", "docs/resources.md"
    )


@hookimpl
def startup(herd: Herd) -> Awaitable[None] | None:
    if not herd.plugin_settings("scheduler"):
        return None  # nothing configured: off, and not even the core module is imported
    from modelherd.plugins.resources.scheduler.runtime import start

    return start(herd)


@hookimpl
def shutdown(herd: Herd) -> Awaitable[None] | None:
    if RUNTIME not in herd.stash:
        return None
    from modelherd.plugins.resources.scheduler.runtime import stop

    return stop(herd)
