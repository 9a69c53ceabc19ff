"""The base class for agents (swarm, trading, rbi … and third parties').

An agent is a consumer of the kernel: it calls `herd.chat` and decides what to do
with the answers. Its `[agents.<name>]` table in plugins.toml is validated by its
`Settings` model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

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
        try:
            self.settings = self.Settings.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "?"
            raise ConfigError(
                f"[agents.{self.name}] {key}: {first['msg']} — see docs/agents.md"
            ) from None

    async def run(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")
