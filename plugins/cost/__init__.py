"""`cost`: the money each call cost, on `response.usage.cost` (docs/cost.md).

On by default; `[plugins.cost] enabled = false` switches it off. Prices come from
`[models.<alias>] price`, else genai-prices' bundled data (never downloaded), else
zero for local models; prices.py says how. A cache hit costs 0 and records what it
saved. Each priced call also emits the `herd.cost` counter (and `herd.cost.saved`)
with the model, tenant and agent attributes, so the OTel plugin exports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from modelherd import hookimpl
from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict

if TYPE_CHECKING:
    from modelherd import Herd
    from modelherd.plugins.cost.runtime import CostHooks

HOOKS_NAME = "cost-calls"


class CostSettings(LazyModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


def cost_hooks(herd: Herd) -> CostHooks | None:
    """The running cost hooks of this herd (None when off or not started)."""
    if not herd.plugins_loaded:
        return None
    plugin = herd.pm.get_plugin(HOOKS_NAME)
    return plugin if plugin is not None and hasattr(plugin, "book") else None


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("cost", CostSettings, "docs/cost.md")


@hookimpl
def startup(herd: Herd) -> None:
    if herd.pm.get_plugin(HOOKS_NAME) is not None:
        return
    settings = herd.plugin_config("cost", CostSettings, "docs/cost.md")
    if not settings.enabled:
        return
    from modelherd.plugins.cost.runtime import CostHooks

    herd.register_plugin(CostHooks(herd), name=HOOKS_NAME)


@hookimpl
def shutdown(herd: Herd) -> None:
    hooks = cost_hooks(herd)
    if hooks is not None:
        herd.unregister_plugin(hooks)
