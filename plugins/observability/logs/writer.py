"""The call path's half (two cheap hooks) and the one background writer.

On the call path a hook only puts (time, run id, request, response or error) on a
queue (~1-2 µs, bench/logs.py). The writer thread does everything else: reading the
fields, encoding content, scrubbing secrets, the SQLite transaction, pruning, and
handing the same records to every sink (the audit JSONL is one, audit_feed.py).
Requests and responses are not changed by the kernel after `after_call`, so reading
them a few milliseconds later reads what the call produced.

The thread wakes at most every `BATCH_S` and writes everything queued in one
transaction. A full queue counts the call in `dropped` and never makes it wait.
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
from modelherd.pipeline import STARTED
from modelherd.plugins.observability.logs.store import COLUMNS, LogStore
from modelherd.runs import current_run
from modelherd.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from modelherd import Herd

log = logging.getLogger("modelherd.logs")
#: how long the writer lets calls gather before one transaction writes them
BATCH_S = 0.05
#: names of environment variables whose values are secrets wherever they appear
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
#: what the hooks enqueue: wall time, run id, the request, the response or the error,
#: the caller's validate= verdict, and a failed call's latency
Event = tuple[
    float,
    str | None,
    ChatRequest,
    ChatResponse | None,
    BaseException | None,
    bool | None,
    float | None,
]

#: a record ready to store: the fields, the messages as JSON text, the answer
Record = tuple[dict[str, Any], str | None, str | None]
#: called in the writer thread with each record's fields, messages (JSON) and answer
Sink = Callable[[dict[str, Any], str | None, str | None], None]


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


def fields(event: Event) -> dict[str, Any]:
    """The columns (and the audit's extra fields) of one call."""
    ts, run_id, request, response, error, valid, failed_after = event
    if response is not None:
        usage = response.usage
        cost = usage.cost
        return {
            "ts": ts,
            "outcome": "ok",
            "tenant": request.tenant,
            "agent": request.agent,
            "run_id": run_id,
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
            "valid": valid,
        }
    assert error is not None
    message = getattr(error, "message", None) or str(error)
    return {
        "ts": ts,
        "outcome": "error",
        "tenant": request.tenant,
        "agent": request.agent,
        "run_id": run_id,
        "alias": request.alias,
        "provider": request.provider,
        "model": request.model,
        "request_model": request.model,
        # from when the call entered the pipeline to the failure
        "latency_s": failed_after,
        "error_type": type(error).__name__,
        "error": message[:2000],
        "stream": request.stream,
        "saved": 0.0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
    }


def ok_row(event: Event) -> tuple[Any, ...]:
    """The COLUMNS of an answered call, built straight into a tuple: what `fields` gives
    for it, without the dict (the writer thread holds the GIL while it builds rows, and a
    test checks the two agree)."""
    ts, run_id, request, response, _error, _valid, _failed_after = event
    assert response is not None
    usage = response.usage
    cost = usage.cost
    return (
        ts,
        "ok",
        request.tenant,
        request.agent,
        run_id,
        request.alias,
        response.provider,
        response.model,
        response.alias or request.alias,
        response.fallback_from,
        response.cache_tier,
        response.attempts,
        response.finish_reason,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        response.latency_s,
        cost.amount if cost is not None else None,
        cost.currency if cost is not None else None,
        cost.saved if cost is not None else 0.0,
        cost.source if cost is not None else None,
        None,
        None,
        response.request_id,
        request.stream,
    )


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
        #: keep prompts and answers in the log
        self.content = content
        #: read prompts and answers at all (the log's content, or a sink that wants them)
        self.capture = content
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.queue_max = queue_max
        self.redact = redact
        # SimpleQueue: a put is ~0.1 µs where queue.Queue's locks cost several
        self.queue: queue.SimpleQueue[Event | threading.Event | None] = queue.SimpleQueue()
        self.sinks: list[Sink] = []
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="herd-call-log", daemon=True)
        self._thread.start()

    # ---- the call path ------------------------------------------------------

    def put(self, event: Event) -> None:
        if self.queue.qsize() >= self.queue_max:
            self.dropped += 1
            return
        self.queue.put(event)

    # ---- the thread ---------------------------------------------------------

    def _record(self, event: Event) -> Record:
        record = fields(event)
        redact = self.redact
        if record.get("error") is not None:
            record["error"] = redact(record["error"])
        if not self.capture:
            return record, None, None
        request, response = event[2], event[3]
        dumped = [m.model_dump(mode="json", exclude_defaults=True) for m in request.messages]
        text = redact(json.dumps(dumped, ensure_ascii=False))
        return record, text, redact(response.content) if response is not None else None

    def _run(self) -> None:
        last_prune = 0.0
        while True:
            first = self.queue.get()
            if first is not None and not isinstance(first, threading.Event):
                time.sleep(BATCH_S)  # let a batch gather: one wake-up, one transaction
            batch = [first]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(entry is None for entry in batch)
            events = [e for e in batch if e is not None and not isinstance(e, threading.Event)]
            if events:
                self._write(events)
            now = time.monotonic()
            if now - last_prune > 60 or stop or self._too_big():
                last_prune = now
                self._prune()
            for entry in batch:
                if isinstance(entry, threading.Event):
                    entry.set()
            if stop:
                return

    def _write(self, events: list[Event]) -> None:
        if not self.sinks and not self.content:
            self._write_metadata(events)
            return
        try:
            records = [self._record(event) for event in events]
        except Exception as exc:  # a field that cannot be read: say so, never crash
            self.failed += len(events)
            log.warning("call log: cannot read a call's fields (%s)", exc)
            return
        content = self.content
        # map(record.get, ...) builds each row in C (a generator costs ~3x as much)
        try:
            if content:
                self.written += self.store.append(
                    (tuple(map(record.get, COLUMNS)), text, answer)
                    for record, text, answer in records
                )
            else:
                self.written += self.store.append_metadata(
                    [tuple(map(record.get, COLUMNS)) for record, _text, _answer in records]
                )
        except Exception as exc:
            self.failed += len(records)
            log.warning("call log %s: cannot write (%s)", self.store.path, exc)
        for sink in self.sinks:
            for record, text, answer in records:
                try:
                    sink(record, text, answer)
                except Exception as exc:
                    log.warning("call log sink %s failed: %s", type(sink).__name__, exc)

    def _write_metadata(self, events: list[Event]) -> None:
        """The common case (no content kept, no sink): rows only, answered calls without
        the per-call dict."""
        try:
            rows = [
                ok_row(event)
                if event[3] is not None
                else tuple(map(self._record(event)[0].get, COLUMNS))
                for event in events
            ]
        except Exception as exc:  # a field that cannot be read: say so, never crash
            self.failed += len(events)
            log.warning("call log: cannot read a call's fields (%s)", exc)
            return
        try:
            self.written += self.store.append_metadata(rows)
        except Exception as exc:
            self.failed += len(rows)
            log.warning("call log %s: cannot write (%s)", self.store.path, exc)

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
        if not self._thread.is_alive():
            return True
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout_s)
        self.store.close()
        for sink in self.sinks:
            closing = getattr(sink, "close", None)
            if closing is not None:
                closing()


class LogHooks:
    """The two hooks on the call path: each only enqueues what the writer will read."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer
        # bound once: after_call runs on every call, and each Python call it saves is
        # ~0.1 µs (writer.put, inlined below)
        self._queue_size = writer.queue.qsize
        self._enqueue = writer.queue.put

    @hookimpl
    def after_call(
        self, request: ChatRequest, response: ChatResponse, herd: Herd, valid: bool | None
    ) -> None:
        writer = self.writer
        if self._queue_size() >= writer.queue_max:  # as LogWriter.put: never wait
            writer.dropped += 1
            return
        self._enqueue((time.time(), current_run(), request, response, None, valid, None))

    @hookimpl
    def on_error(self, request: ChatRequest, error: BaseException, herd: Herd, final: bool) -> None:
        if final:
            t0 = request.stash.get(STARTED, None)
            latency = time.perf_counter() - t0 if t0 is not None else None
            self.writer.put((time.time(), current_run(), request, None, error, None, latency))
