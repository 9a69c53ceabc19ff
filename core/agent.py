"""The base class for agents (swarm, trading, rbi … and third parties').

An agent is a consumer of the kernel: it calls `herd.chat` and decides what to do
with the answers. Its `[agents.<name>]` table in plugins.toml is validated by its
`Settings` model.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict

from .config import validate_table
from .lazy_model import LazyModel
from .runs import run_scope

if TYPE_CHECKING:
    from .kernel import Herd


class AgentSettings(LazyModel):
    model_config = ConfigDict(extra="forbid")


class Agent:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Settings: ClassVar[type[AgentSettings]] = AgentSettings

    def __init__(self, herd: Herd, settings: dict[str, Any] | None = None) -> None:
        self.herd = herd
        raw = dict(herd.config.agents.get(self.name, {}))
        raw.update(settings or {})
        self.settings = validate_table(
            self.Settings, raw, f"[agents.{self.name}]", "docs/agents.md"
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # every agent's run() is one run: its calls share a run id in the call log
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "_herd_run_scope", False):

            @functools.wraps(run)
            async def scoped(self: Agent, **kw: Any) -> Any:
                with run_scope(self.name or type(self).__name__):
                    return await run(self, **kw)

            scoped._herd_run_scope = True  # type: ignore[attr-defined]
            cls.run = scoped  # type: ignore[method-assign]

    async def run(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")
