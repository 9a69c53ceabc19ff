"""Where alerts go: the log, a webhook (httpx, from a worker thread), the `on_alert` hook.

The log line and the `on_alert` hook run at once (hooks must be fast and must not
raise; each implementation is isolated with `herd.call_each`). The webhook POST runs
in its own thread so a slow receiver never delays a model call or the KPI loop; a
failed POST is a warning in the log, never an exception.

Alert lines never go to stdout, which is a command's output (`herd run rbi > out.json`
must not get a `[FIRING] cpu …` line): with no logging configured they are written to
stderr; once the application configures logging, its handlers get them instead.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from typing import TYPE_CHECKING, Any

from modelherd.plugins.observability.alerts.kpi import Alert

if TYPE_CHECKING:
    from modelherd import Herd

log = logging.getLogger("modelherd.alerts")


class StderrUnlessConfigured(logging.Handler):
    """Writes alert records to stderr (looked up at each line) while the root logger has
    no handlers; when it has some, the record propagates to those and this one stays quiet."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _attach_stderr_handler() -> None:
    if not any(isinstance(h, StderrUnlessConfigured) for h in log.handlers):
        handler = StderrUnlessConfigured()
        handler.setFormatter(logging.Formatter("herd alert: %(message)s"))
        log.addHandler(handler)


_attach_stderr_handler()


class WebhookSender:
    """POSTs each alert as JSON to one URL, in order, from a daemon thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self.sent = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._run, name="herd-alert-webhook", daemon=True)
        self.thread.start()

    def send(self, payload: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(payload)
        except queue.Full:
            log.warning("alert webhook queue is full; dropping an alert for %s", self.url)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                payload = self.queue.get()
                try:
                    if payload is None:
                        return
                    response = client.post(self.url, json=payload)
                    response.raise_for_status()
                    self.sent += 1
                except Exception as exc:
                    self.failed += 1
                    # the URL may hold a token: name the host only
                    host = httpx.URL(self.url).host
                    log.warning(
                        "alert webhook to %s failed: %s — check [plugins.alerts] webhook_url",
                        host,
                        type(exc).__name__,
                    )
                finally:
                    self.queue.task_done()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every queued alert has been sent (or has failed)."""
        done = threading.Event()

        def wait() -> None:
            self.queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout_s)


class Notifier:
    """Fans one alert out to the log, the webhook and the `on_alert` hook."""

    def __init__(self, herd: Herd, log_enabled: bool, webhook: WebhookSender | None) -> None:
        self.herd = herd
        self.log_enabled = log_enabled
        self.webhook = webhook
        #: every alert event sent, oldest first (bounded)
        self.history: list[Alert] = []

    def notify(self, alert: Alert) -> None:
        self.history.append(alert)
        del self.history[:-500]
        if self.log_enabled:
            level = logging.WARNING if alert.state == "firing" else logging.INFO
            log.log(level, "[%s] %s", alert.state.upper(), alert.message)
        if self.webhook is not None:
            self.webhook.send({"source": "modelherd", "alert": alert.to_dict()})
        self.herd.call_each("on_alert", alert=alert, herd=self.herd)

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()
