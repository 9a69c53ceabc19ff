"""`[plugins.logs]`: where the call log lives, what it keeps, and for how long."""

from __future__ import annotations

from pathlib import Path

from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field

DOCS = "docs/logs.md"


class LogSettings(LazyModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: the SQLite file; default: <user data dir>/modelherd/logs.db
    path: str | None = None
    #: also keep prompts and answers (searchable with `herd logs -q`); off by default
    content: bool = False
    #: rows older than this are deleted
    retention_days: float = Field(30.0, gt=0)
    #: the file is kept under this size by deleting the oldest rows
    max_mb: float = Field(512.0, ge=1)
    #: calls waiting for the writer; past it a call is counted as dropped, never waited on
    queue_max: int = Field(100_000, ge=100)


def default_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("modelherd")) / "logs.db"


def resolve_path(settings: LogSettings) -> Path:
    return Path(settings.path).expanduser() if settings.path else default_path()
