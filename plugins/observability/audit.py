"""Audit log: one JSON line per call (metadata only), append-only, rotated by size.

Off unless configured: `[plugins.audit] path = "audit.jsonl"` (or `enabled = true`,
which writes to the user data dir). Each line: time, outcome, tenant, agent, alias,
provider, model, tokens, latency, cache tier, attempts, fallback, validation, error
type. Prompts and answers are written only with `include_content = true`.

Lines are handed to a writer thread through a queue, so a slow disk never delays a
call. When the file would pass `max_bytes` it is renamed to `<path>.1` (older ones
shift to .2 … up to `backups`) and a new file is started; lines are never rewritten.
The file is created with mode 0600 (its folder, when herd creates it, 0700).

Any record can be written: text that is not valid Unicode (a lone surrogate such as
"\udce9" in a prompt, tenant or agent name) is written with a replacement character,
values JSON cannot hold are written as text, and no error ends the writer thread. A
failed write is visible: a warning (once per kind of error), the
`herd.audit.write_failures` metric, `herd doctor`, and with `fail_closed = true` the
next calls are refused until a record is written again.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.config import validate_table
from modelherd.errors import ConfigError, HerdError
from modelherd.lazy_model import LazyModel
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from modelherd import Herd

WRITER_NAME = "audit-log"
#: fail-closed check, failure metric and doctor findings: registered apart from the
#: writer, so they stay when the call log adopts the writer (logs/audit_feed.py)
GUARD_NAME = "audit-guard"
_T0 = StashKey[float]()


class AuditSettings(LazyModel):
    model_config = ConfigDict(extra="forbid")

    #: None = on when `path` is set
    enabled: bool | None = None
    path: str | None = None
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    backups: int = Field(default=5, ge=0)
    include_content: bool = False
    #: refuse calls while the audit log cannot be written (an unaudited call is an error)
    fail_closed: bool = False


class AuditUnavailableError(HerdError):
    """`fail_closed = true` and the last audit record could not be written."""


def parse_settings(table: dict[str, Any], source: str) -> AuditSettings:
    return validate_table(
        AuditSettings, table, f"{source}: [plugins.audit]", "docs/observability.md"
    )


def default_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("modelherd")) / "audit.jsonl"


class AuditLog:
    """The per-call hooks and the writer thread."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        backups: int,
        include_content: bool,
        fail_closed: bool = False,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.include_content = include_content
        self.fail_closed = fail_closed
        self.written = 0
        #: records that could not be written, and why the last one failed
        self.failures = 0
        self.last_error: str | None = None
        #: the last write failed (cleared by the next one that succeeds)
        self.failing = False
        self._warned: set[str] = set()
        # records go to the writer thread as dicts: JSON encoding happens there
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = self._open()
        self._thread = threading.Thread(target=self._run, name="herd-audit", daemon=True)
        self._thread.start()

    # ---- the call path -------------------------------------------------------

    @hookimpl
    def before_call(self, request: ChatRequest, herd: Herd) -> None:
        if _T0 not in request.stash:
            request.stash[_T0] = time.perf_counter()

    def health(self) -> list[dict[str, Any]]:
        """What `herd doctor` says about this writer."""
        problem = None
        if not os.access(self.path.parent, os.W_OK):
            problem = f"{self.path.parent} is not writable"
        else:
            try:
                stat = os.statvfs(self.path.parent)
            except OSError as exc:
                problem = exc.strerror
            else:
                if stat.f_bavail * stat.f_frsize < 1024 * 1024:
                    problem = "less than 1 MiB free on its disk"
        if self.failures:
            problem = f"{self.failures} record(s) could not be written ({self.last_error})"
        if problem is None:
            return [_finding("ok", f"audit log {self.path}: writable")]
        return [
            _finding(
                "error" if self.fail_closed else "warning",
                f"audit log {self.path}: {problem}",
                "free space or point [plugins.audit] path at a writable disk",
            )
        ]

    @hookimpl
    def after_call(
        self, request: ChatRequest, response: ChatResponse, herd: Herd, valid: bool | None
    ) -> None:
        usage = response.usage
        record: dict[str, Any] = {
            "time": time.time(),
            "outcome": "ok",
            "tenant": request.tenant,
            "agent": request.agent,
            "alias": request.alias,
            "provider": response.provider,
            "model": request.model,
            "response_model": response.model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "latency_s": round(response.latency_s, 6),
            "cache_tier": response.cache_tier,
            "attempts": response.attempts,
            "fallback_from": response.fallback_from,
            "answered_by": response.alias or request.alias,
            "finish_reason": response.finish_reason,
            "valid": valid,
            "request_id": response.request_id,
        }
        if self.include_content:
            record["messages"] = [
                m.model_dump(mode="json", exclude_defaults=True) for m in request.messages
            ]
            record["answer"] = response.content
        self._queue.put(record)

    @hookimpl
    def on_error(self, request: ChatRequest, error: BaseException, herd: Herd, final: bool) -> None:
        if not final:
            return
        t0 = request.stash.get(_T0, None)
        record: dict[str, Any] = {
            "time": time.time(),
            "outcome": "error",
            "tenant": request.tenant,
            "agent": request.agent,
            "alias": request.alias,
            "provider": request.provider,
            "model": request.model,
            "latency_s": round(time.perf_counter() - t0, 6) if t0 is not None else None,
            "error_type": type(error).__name__,
        }
        if self.include_content:
            record["messages"] = [
                m.model_dump(mode="json", exclude_defaults=True) for m in request.messages
            ]
        self._queue.put(record)

    # ---- the writer thread ---------------------------------------------------

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fd = self._open()

    def _write(self, record: dict[str, Any]) -> bool:
        """Write one record; never raises (a failure is counted, warned once per kind
        and flags the log as failing until a write succeeds). Runs in a writer thread:
        this one's, or the call log's when it adopted this writer."""
        try:
            self._write_line(record)
        except Exception as exc:  # no record and no disk error may end the writer
            self.failures += 1
            self.failing = True
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.last_error = why[:200]
            if type(exc).__name__ + why not in self._warned:
                self._warned.add(type(exc).__name__ + why)
                import logging

                logging.getLogger("modelherd.audit").warning(
                    "cannot write the audit log %s: %s — check [plugins.audit] path",
                    self.path,
                    why,
                )
            return False
        self.failing = False
        return True

    def _write_line(self, record: dict[str, Any]) -> None:
        record["time"] = _iso(record["time"])
        # "replace": a lone surrogate ("\udce9") becomes "?" instead of killing the line
        text = json.dumps(record, ensure_ascii=False, default=str)
        data = (text + "\n").encode("utf-8", "replace")
        size = os.fstat(self._fd).st_size
        if size and size + len(data) > self.max_bytes:
            self._rotate()
        os.write(self._fd, data)
        self.written += 1

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            self._write(record)

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self._queue.put(None)
        self._thread.join(10)
        os.close(self._fd)


class AuditGuard:
    """Fail closed, count failures as a metric, answer `herd doctor` — for the writer
    whichever thread drives it."""

    def __init__(self, writer: AuditLog) -> None:
        self.writer = writer
        self._reported = 0

    @hookimpl
    def before_call(self, request: ChatRequest, herd: Herd) -> None:
        writer = self.writer
        failures = writer.failures
        if failures != self._reported:  # emitted on the call path, not the writer thread
            from modelherd.types import Metric

            herd.emit(Metric("herd.audit.write_failures", failures - self._reported))
            self._reported = failures
        if writer.fail_closed and writer.failing:
            raise AuditUnavailableError(
                f"the audit log {writer.path} cannot be written ({writer.last_error}) and "
                "[plugins.audit] fail_closed = true: calls are refused until it can — "
                "free space or fix the path"
            )

    def doctor_findings(self, herd: Herd | None = None) -> list[dict[str, Any]]:
        return self.writer.health()


def _finding(level: str, message: str, fix: str = "") -> dict[str, Any]:
    return {"area": "audit", "level": level, "message": message, "fix": fix}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def audit_log(herd: Herd) -> AuditLog | None:
    if not herd.plugins_loaded:
        return None
    plugin = herd.pm.get_plugin(WRITER_NAME)
    return plugin if isinstance(plugin, AuditLog) else None


def doctor_findings(herd: Herd) -> list[dict[str, Any]]:
    """`herd doctor` on a configured audit log that this process has not opened (an
    open writer answers for itself)."""
    table = herd.plugin_settings("audit")
    if not table or (herd.plugins_loaded and herd.pm.get_plugin(GUARD_NAME) is not None):
        return []
    try:
        settings = parse_settings(table, herd.config.source)
    except ConfigError as exc:
        return [_finding("error", exc.message)]
    if not (settings.enabled if settings.enabled is not None else settings.path is not None):
        return []
    path = Path(settings.path).expanduser() if settings.path else default_path()
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        return [
            _finding(
                "error" if settings.fail_closed else "warning",
                f"audit log {path}: {folder} is not writable",
                "point [plugins.audit] path at a writable folder",
            )
        ]
    return [_finding("ok", f"audit log {path}: writable")]


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("audit", parse_settings, "docs/observability.md")


@hookimpl
def startup(herd: Herd) -> None:
    table = herd.plugin_settings("audit")
    if not table or herd.pm.get_plugin(WRITER_NAME) is not None:
        return
    settings = parse_settings(table, herd.config.source)
    enabled = settings.enabled if settings.enabled is not None else settings.path is not None
    if not enabled:
        return
    path = Path(settings.path).expanduser() if settings.path else default_path()
    try:
        writer = AuditLog(
            path,
            settings.max_bytes,
            settings.backups,
            settings.include_content,
            settings.fail_closed,
        )
    except OSError as exc:
        raise ConfigError(
            f"{herd.config.source}: [plugins.audit] path: cannot open {path}: {exc.strerror} — "
            f"choose a writable path"
        ) from None
    herd.register_plugin(writer, name=WRITER_NAME)
    herd.register_plugin(AuditGuard(writer), name=GUARD_NAME)


@hookimpl
def shutdown(herd: Herd) -> None:
    guard = herd.pm.get_plugin(GUARD_NAME) if herd.plugins_loaded else None
    if guard is not None:
        herd.unregister_plugin(guard)
    writer = audit_log(herd)
    if writer is not None:
        herd.unregister_plugin(writer)
        writer.close()
