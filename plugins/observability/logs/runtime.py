"""Starting the call log for one herd: open the file, start the writer, wire sinks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelherd.errors import ConfigError
from modelherd.plugins.observability.logs.settings import LogSettings, resolve_path
from modelherd.plugins.observability.logs.store import LogFileError, LogStore
from modelherd.plugins.observability.logs.writer import LogHooks, LogWriter, Redactor, secret_values

if TYPE_CHECKING:
    from modelherd import Herd


def start(herd: Herd, settings: LogSettings) -> LogHooks:
    path = resolve_path(settings)
    try:
        store = LogStore(path)
    except LogFileError as exc:
        raise ConfigError(f"{herd.config.source}: [plugins.logs] path: {exc}") from None
    except OSError as exc:
        raise ConfigError(
            f"{herd.config.source}: [plugins.logs] path: cannot create {path}: "
            f"{exc.strerror} — choose a writable path"
        ) from None
    writer = LogWriter(
        store,
        content=settings.content,
        retention_s=settings.retention_days * 86400,
        max_bytes=int(settings.max_mb * 1024 * 1024),
        queue_max=settings.queue_max,
        redact=Redactor(secret_values(herd.env)),
    )
    return LogHooks(writer)
