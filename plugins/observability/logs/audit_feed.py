"""One writer for both logs: the call log's thread also writes the audit JSONL.

When the audit plugin is on, the call log adopts its writer at startup: the audit
plugin's own hooks come off the call path (one record built per call, not two) and
each record the call-log thread writes to SQLite is also appended to the audit file
through the audit writer's own `_write` (its format, rotation and file mode). The
audit file stays the append-only export for compliance; nothing about it changes for
the reader.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelherd import Herd
    from modelherd.plugins.observability.audit import AuditLog
    from modelherd.plugins.observability.logs.writer import LogHooks

#: fields of an "ok" audit line, in the audit plugin's order
_OK_FIELDS = (
    "outcome",
    "tenant",
    "agent",
    "alias",
    "provider",
    "model",
    "response_model",
    "input_tokens",
    "output_tokens",
    "latency_s",
    "cache_tier",
    "attempts",
    "fallback_from",
    "answered_by",
    "finish_reason",
    "valid",
    "request_id",
)
_ERROR_FIELDS = ("outcome", "tenant", "agent", "alias", "provider", "model", "latency_s")


class AuditFeed:
    """A sink of the call-log writer that appends audit lines (runs in its thread)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def __call__(self, record: dict[str, Any], messages: Any, answer: str | None) -> None:
        # the audit line names the alias's model as "model", the answering one apart
        line = {**record, "model": record.get("request_model"), "response_model": record["model"]}
        fields = _OK_FIELDS if record["outcome"] == "ok" else _ERROR_FIELDS
        out: dict[str, Any] = {"time": record["ts"], **{k: line.get(k) for k in fields}}
        if out.get("latency_s") is not None:
            out["latency_s"] = round(out["latency_s"], 6)
        if record["outcome"] == "error":
            out["error_type"] = record.get("error_type")
        else:
            out["cost"] = record.get("cost")
            out["currency"] = record.get("currency")
        if record.get("run_id"):
            out["run_id"] = record["run_id"]
        if self.audit.include_content and messages is not None:
            out["messages"] = json.loads(messages) if isinstance(messages, str) else messages
            if record["outcome"] == "ok":
                out["answer"] = answer
        self.audit._write(out)

    def close(self) -> None:
        self.audit.close()


def adopt_audit(herd: Herd, hooks: LogHooks) -> AuditFeed | None:
    """Take over the running audit writer, if the audit plugin started one."""
    from modelherd.plugins.observability import audit

    writer = herd.pm.get_plugin(audit.WRITER_NAME)
    if not isinstance(writer, audit.AuditLog):
        return None
    herd.unregister_plugin(writer)
    feed = AuditFeed(writer)
    hooks.writer.sinks.append(feed)
    if writer.include_content:
        hooks.writer.capture = True
    return feed
