"""The base class for agents (swarm, trading, rbi … and third parties').

An agent is a consumer of the kernel: it calls `herd.chat` and decides what to do
with the answers. Its `[agents.<name>]` table in plugins.toml is validated by its
`Settings` model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .config import validate_table

if TYPE_CHECKING:
    from .kernel import Herd


class AgentSettings(BaseModel):
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

    async def run(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")
