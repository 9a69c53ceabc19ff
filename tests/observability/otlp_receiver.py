"""A real OTLP/HTTP receiver on 127.0.0.1 for tests and benchmarks.

It accepts POST /v1/traces and /v1/metrics with protobuf bodies, decodes them with
opentelemetry-proto (ExportTraceServiceRequest / ExportMetricsServiceRequest) and keeps
what it received. `status` lets a test make it fail (e.g. 503) to check that an
exporter failure stays a warning.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OtlpReceiver:
    def __init__(self) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.trace_requests: list[Any] = []
        self.metric_requests: list[Any] = []
        self.status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.status != 200:
                    self.send_response(receiver.status)
                    self.end_headers()
                    return
                if self.path == "/v1/traces":
                    message: Any = ExportTraceServiceRequest()
                    message.ParseFromString(body)
                    with receiver.lock:
                        receiver.trace_requests.append(message)
                elif self.path == "/v1/metrics":
                    message = ExportMetricsServiceRequest()
                    message.ParseFromString(body)
                    with receiver.lock:
                        receiver.metric_requests.append(message)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # /count: how many spans arrived (for bench/)
                body = str(len(receiver.spans())).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- what arrived ------------------------------------------------------------

    def spans(self) -> list[Any]:
        with self.lock:
            requests = list(self.trace_requests)
        return [
            span
            for req in requests
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> every Metric message received under it."""
        with self.lock:
            requests = list(self.metric_requests)
        found: dict[str, list[Any]] = {}
        for req in requests:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        found.setdefault(metric.name, []).append(metric)
        return found

    def wait_spans(self, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if len(spans) >= count:
                return spans
            time.sleep(0.02)
        return self.spans()


def attributes(item: Any) -> dict[str, Any]:
    """A span's (or data point's) attributes as a plain dict."""
    out: dict[str, Any] = {}
    for kv in item.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = tuple(getattr(v, v.WhichOneof("value")) for v in value.array_value.values)
        else:
            out[kv.key] = getattr(value, kind) if kind else None
    return out


if __name__ == "__main__":  # a receiver in its own process: prints its endpoint, serves
    with OtlpReceiver() as rec:
        print(rec.endpoint, flush=True)
        rec.thread.join()
