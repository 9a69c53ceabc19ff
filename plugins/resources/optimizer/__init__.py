"""`optimizer`: place local models in GPU/RAM memory; `herd plan MODEL` explains it.

The entry point stays light (plugin load is on every `herd` start): the settings,
the estimator and the per-call hooks live in runtime.py and load at startup,
and only when the optimizer is on do they register a per-call hook. The
`herd plan` command is built from runtime.py on first use. docs/resources.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.stash import StashKey

if TYPE_CHECKING:
    import click
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.optimizer.runtime import Optimizer


#: this Herd's running optimizer (set by runtime.start, read at shutdown); the key lives
#: here so that shutdown can test for it without importing the runtime module
RUNTIME: StashKey[Optimizer] = StashKey()


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("optimizer", _check_settings, "docs/resources.md")


def _check_settings(table: dict[str, Any], source: str) -> object:
    # runtime.py is imported only when there is a table to check (it is not light)
    from modelherd.config import validate_table
    from modelherd.plugins.resources.optimizer.runtime import OptimizerSettings

    return validate_table(
        OptimizerSettings, table, f"{source}: [plugins.optimizer]", "docs/resources.md"
    )


@hookimpl
def startup(herd: Herd) -> Awaitable[None] | None:
    if not herd.plugin_settings("optimizer"):  # "auto": is there anything to place?
        from modelherd.plugins.resources.device_memory import nvidia_driver_absent

        if nvidia_driver_absent():
            return None  # CPU only and no budget: nothing to do, nothing imported
    from modelherd.plugins.resources.optimizer.runtime import start

    return start(herd)


@hookimpl
def shutdown(herd: Herd) -> None:
    if RUNTIME in herd.stash:
        from modelherd.plugins.resources.optimizer.runtime import stop

        stop(herd)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from modelherd.plugins.resources.optimizer.runtime import make_plan_command

    cli.add_command(make_plan_command())
