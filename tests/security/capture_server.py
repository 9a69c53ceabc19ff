"""A tiny HTTP server on 127.0.0.1 that records every request's method, path, headers
and body — the attacker's host in the config-trust tests, and the user's own
(stand-in vendor) host beside it.

It answers just enough of the OpenAI wire format (GET /v1/models, POST
/v1/chat/completions) for `herd doctor` and `herd chat --no-stream` to succeed against
it, and 200 `{}` to anything else (OTLP exports, alert webhooks).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "gpt-x"


class CaptureServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with capture.lock:
                    capture.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                return body

            def _reply(self, data: Any) -> None:
                raw = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._record()
                if self.path.endswith("/models"):
                    model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "t"}
                    self._reply({"object": "list", "data": [model]})
                else:
                    self._reply({})

            def do_POST(self) -> None:
                self._record()
                if self.path.endswith("/chat/completions"):
                    self._reply(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "created": 0,
                            "model": MODEL_ID,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": "pong"},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": 1,
                                "completion_tokens": 1,
                                "total_tokens": 2,
                            },
                        }
                    )
                else:
                    self._reply({})

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CaptureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def carries(self, secret: str) -> bool:
        """Whether any request held `secret` in a header or its body."""
        for request in self.seen():
            if any(secret in value for value in request["headers"].values()):
                return True
            if secret.encode() in request["body"]:
                return True
        return False
