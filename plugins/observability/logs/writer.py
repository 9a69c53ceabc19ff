"""The call path's half (three cheap hooks) and the one background writer.

On the call path a hook only reads a few attributes into a tuple and puts it on a
queue (~1-2 µs, bench/logs.py); the writer thread turns the tuples into rows —
content encoding, secret redaction, the SQLite transaction, pruning — and hands the
same records to every registered sink (the audit JSONL is one). When the queue is
full a call is counted in `dropped`, never made to wait.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.plugins.observability.logs.store import COLUMNS, LogStore
from modelherd.runs import current_run
from modelherd.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from modelherd import Herd

log = logging.getLogger("modelherd.logs")
_T0 = "herd.logs_t0"
#: names of environment variables whose values are secrets wherever they appear
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
#: what goes on the queue: the record, the request's messages, the answer
Item = tuple[dict[str, Any], Any, str | None]
#: called in the writer thread with each record, its messages (JSON text when content
#: is kept) and the answer
Sink = Callable[[dict[str, Any], Any, str | None], None]


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The values to scrub: every secret-named variable's value of 8+ characters."""
    found = {v for k, v in env.items() if _SECRET_NAME.search(k) and v and len(v) >= 8}
    return sorted(found, key=len, reverse=True)


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        self.pattern = re.compile("|".join(re.escape(s) for s in secrets)) if secrets else None

    def __call__(self, text: str | None) -> str | None:
        if text is None or self.pattern is None:
            return text
        return self.pattern.sub("[redacted]", text)


class LogWriter:
    """Owns the queue, the thread, and the store. One per herd."""

    def __init__(
        self,
        store: LogStore,
        *,
        content: bool,
        retention_s: float,
        max_bytes: int,
        queue_max: int,
        redact: Redactor,
    ) -> None:
        self.store = store
        self.content = content
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.redact = redact
        self.queue: queue.Queue[Item | None] = queue.Queue(maxsize=queue_max)
        self.sinks: list[Sink] = []
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="herd-call-log", daemon=True)
        self._thread.start()

    # ---- the call path ------------------------------------------------------

    def put(self, item: Item) -> None:
        self._idle.clear()
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    # ---- the thread ---------------------------------------------------------

    def _prepare(self, item: Item) -> Item:
        """Redact what will be stored; messages become JSON text."""
        record, messages, answer = item
        redact = self.redact
        if record.get("error") is not None:
            record["error"] = redact(record["error"])
        text = None
        if messages is not None:
            dumped = [m.model_dump(mode="json", exclude_defaults=True) for m in messages]
            text = redact(json.dumps(dumped, ensure_ascii=False))
        return record, text, redact(answer)

    def _row(self, item: Item) -> Any:
        record, text, answer = item
        values = tuple(record.get(name) for name in COLUMNS)
        return (values, text, answer) if self.content else (values, None, None)

    def _run(self) -> None:
        last_prune = 0.0
        while True:
            item = self.queue.get()
            batch = [item]
            while len(batch) < 1000:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(entry is None for entry in batch)
            items = [entry for entry in batch if entry is not None]
            if items:
                self._write(items)
            now = time.monotonic()
            if now - last_prune > 60 or stop or self._too_big():
                last_prune = now
                self._prune()
            if self.queue.empty():
                self._idle.set()
            if stop:
                return

    def _write(self, raw: list[Item]) -> None:
        items = [self._prepare(item) for item in raw]
        try:
            self.written += self.store.append(self._row(item) for item in items)
        except Exception as exc:
            self.failed += len(items)
            log.warning("call log %s: cannot write (%s)", self.store.path, exc)
        for sink in self.sinks:
            for record, text, answer in items:
                try:
                    sink(record, text, answer)
                except Exception as exc:
                    log.warning("call log sink %s failed: %s", type(sink).__name__, exc)

    def _too_big(self) -> bool:
        try:
            return self.store.file_pages_bytes() > self.max_bytes
        except Exception:
            return False

    def _prune(self) -> None:
        try:
            self.store.prune(self.retention_s, self.max_bytes)
        except Exception as exc:
            log.warning("call log %s: cannot prune (%s)", self.store.path, exc)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written."""
        return self._idle.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout_s)
        self.store.close()
        for sink in self.sinks:
            closing = getattr(sink, "close", None)
            if closing is not None:
                closing()


class LogHooks:
    """The three hooks on the call path; they only build a record and enqueue it."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer
        #: hand messages and answers to the writer (for the log's content or a sink's)
        self.capture = writer.content

    @hookimpl
    def before_call(self, request: ChatRequest, herd: Herd) -> None:
        context = request.context
        if _T0 not in context:
            context[_T0] = time.perf_counter()

    @hookimpl
    def after_call(self, request: ChatRequest, response: ChatResponse, herd: Herd) -> None:
        usage = response.usage
        cost = usage.cost
        record = {
            "ts": time.time(),
            "outcome": "ok",
            "tenant": request.tenant,
            "agent": request.agent,
            "run_id": current_run(),
            "alias": request.alias,
            "provider": response.provider,
            "model": response.model,
            "request_model": request.model,
            "answered_by": response.alias or request.alias,
            "fallback_from": response.fallback_from,
            "cache_tier": response.cache_tier,
            "attempts": response.attempts,
            "finish_reason": response.finish_reason,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "latency_s": response.latency_s,
            "cost": cost.amount if cost is not None else None,
            "currency": cost.currency if cost is not None else None,
            "saved": cost.saved if cost is not None else 0.0,
            "price_source": cost.source if cost is not None else None,
            "request_id": response.request_id,
            "stream": request.stream,
            "valid": request.context.get("valid"),
        }
        if self.capture:
            self.writer.put((record, request.messages, response.content))
        else:
            self.writer.put((record, None, None))

    @hookimpl
    def on_error(self, request: ChatRequest, error: BaseException, herd: Herd) -> None:
        if not request.context.get("final"):
            return
        t0 = request.context.get(_T0)
        message = getattr(error, "message", None) or str(error)
        record = {
            "ts": time.time(),
            "outcome": "error",
            "tenant": request.tenant,
            "agent": request.agent,
            "run_id": current_run(),
            "alias": request.alias,
            "provider": request.provider,
            "model": request.model,
            "request_model": request.model,
            "latency_s": time.perf_counter() - t0 if t0 is not None else None,
            "error_type": type(error).__name__,
            "error": message[:2000],
            "stream": request.stream,
            "saved": 0.0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
        }
        self.writer.put((record, request.messages if self.capture else None, None))
