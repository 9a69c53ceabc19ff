"""Operations: health, /metrics, request ids, size limits, slow clients, draining, traces."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from modelherd.testing import MockModel

from .gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(60)
MSG = [{"role": "user", "content": "hi"}]


def ask(server: GatewayServer, key: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=headers,
        json={"model": kw.pop("model", "mock"), "messages": MSG, **kw},
        timeout=10,
    )


def test_healthz_and_readyz(gateway: GatewayServer) -> None:
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["keys"] == {"store": "file", "ok": True}
    assert body["models"]["mock"] == {"ok": True}


def test_metrics_by_model_and_tenant_with_bounded_labels(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    server = make_gateway(label_limit=2)
    for tenant in ("alice", "bob", "carol", "dave"):
        assert ask(server, server.key(tenant)).status_code == 200
    assert ask(server, "hk_000000000000_" + "x" * 43).status_code == 401
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    route = 'route="/v1/chat/completions"'
    assert (
        f'herd_gateway_requests_total{{model="mock",{route},status="200",tenant="alice"}} 1.0'
        in text
    )
    assert (
        f'herd_gateway_requests_total{{model="mock",{route},status="200",tenant="bob"}} 1.0' in text
    )
    # tenants past the label limit share one series instead of growing the cardinality
    assert (
        f'herd_gateway_requests_total{{model="mock",{route},status="200",tenant="other"}} 2.0'
        in text
    )
    assert 'tenant="carol"' not in text
    assert f'herd_gateway_requests_total{{model="-",{route},status="401",tenant="-"}} 1.0' in text
    assert 'herd_gateway_tokens_total{model="mock",tenant="alice",type="output"} 1.0' in text
    assert 'herd_gateway_cache_lookups_total{model="mock",tier="miss"} 4.0' in text
    assert "herd_gateway_request_duration_seconds_bucket" in text
    assert "herd_gateway_in_flight 0.0" in text
    assert text.count("hk_") == 0  # keys never reach the metrics


def test_request_id_is_echoed_or_made(gateway: GatewayServer) -> None:
    key = gateway.key()
    given = ask(gateway, key, headers={"x-request-id": "trace-me-123"})
    assert given.headers["x-request-id"] == "trace-me-123"
    assert given.json()["id"] == "chatcmpl-trace-me-123"
    made = ask(gateway, key, headers={"x-request-id": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 24 and " " not in made.headers["x-request-id"]
    refused = httpx.get(f"{gateway.url}/v1/models", timeout=5)
    assert refused.status_code == 401 and refused.headers["x-request-id"]


def test_body_and_header_size_limits(make_gateway: Callable[..., GatewayServer]) -> None:
    model = MockModel()
    server = make_gateway({"mock": model}, max_body_bytes=2000, max_header_bytes=1024)
    key = server.key()
    big = ask(server, key, messages=[{"role": "user", "content": "x" * 5000}])
    assert big.status_code == 413
    assert big.json()["error"]["type"] == "invalid_request_error"
    huge_header = ask(server, key, headers={"x-junk": "y" * 4000})
    assert huge_header.status_code in (400, 431)
    assert model.history == []  # neither reached the model


def test_a_slow_client_is_dropped_with_408(make_gateway: Callable[..., GatewayServer]) -> None:
    server = make_gateway(client_timeout_s=0.5)
    key = server.key()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":'
            ).encode()
        )
        started = time.monotonic()
        reply = sock.recv(4096).decode()
        waited = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408")
    assert "did not arrive within 0.5s" in reply
    assert waited < 3


def _closed_within(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (recv returns b""); fails on any bytes."""
    started = time.monotonic()
    data = sock.recv(4096)
    assert data == b"", data[:80]
    return time.monotonic() - started


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # connects and says nothing
        b"POST /v1/chat/comp",  # half a request line
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bear",  # half a head
    ],
)
def test_a_client_that_stalls_before_its_request_head_ends_is_disconnected(
    make_gateway: Callable[..., GatewayServer], partial: bytes
) -> None:
    model = MockModel()
    server = make_gateway({"mock": model}, client_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(partial)
        waited = _closed_within(sock)
    assert 0.4 <= waited < 3
    assert model.history == []


def test_a_client_trickling_its_head_is_disconnected_on_time(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    """Bytes that keep arriving do not extend the deadline (the slowloris attack)."""
    server = make_gateway(client_timeout_s=0.5)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + b"x-pad: " + b"y" * 200
    started = time.monotonic()
    closed = False
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for byte in head:  # 200+ bytes, 50 ms apart: ~10 s if the server never cut it
            try:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                closed = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                continue  # still open, nothing to read
            except OSError:  # a broken pipe or a reset: the server closed it
                closed = True
            if closed:
                break
    assert closed
    assert 0.4 <= time.monotonic() - started < 3


def test_a_keepalive_connection_that_stalls_in_its_next_request_is_disconnected(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    server = make_gateway(client_timeout_s=0.5)
    key = server.key()
    body = b'{"model":"mock","messages":[{"role":"user","content":"hi"}]}'
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(4096)
        head, _, rest = reply.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHo")
        waited = _closed_within(sock)
    assert waited < 3


def test_an_aiohttp_that_cannot_drop_stalled_clients_is_refused() -> None:
    from modelherd.errors import ConfigError
    from modelherd.plugins.serve.server import check_aiohttp

    check_aiohttp("3.14.4")
    check_aiohttp("4.0.0a1")
    with pytest.raises(ConfigError) as caught:
        check_aiohttp("3.14.3")
    message = str(caught.value)
    assert "needs aiohttp >= 3.14.4 (this is 3.14.3" in message
    assert 'pip install -U "aiohttp>=3.14.4"' in message
    assert "\n" not in message


def test_draining_lets_the_inflight_stream_finish_and_refuses_new_work(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    server = make_gateway({"mock": MockModel(latency=1.0, default="slow but complete")})
    key = server.key()
    lines: list[str] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock", "messages": MSG, "stream": True},
            timeout=10,
        ) as response:
            lines.extend(line for line in response.iter_lines() if line)

    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 10
    while server.gateway.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the stream is in flight, waiting on the model (not a guess)
    assert server.gateway.in_flight == 1
    took = server.drain()
    thread.join(10)
    assert lines[-1] == "data: [DONE]"
    assert "complete" in "".join(lines)
    assert 0.5 < took < 5
    with pytest.raises(httpx.ConnectError):
        ask(server, key)


def test_server_span_continues_the_clients_traceparent(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.proto")
    sys.path.insert(0, str(Path(__file__).parents[1] / "observability"))
    from modelherd.plugins.observability import otel
    from otlp_receiver import OtlpReceiver, attributes

    with OtlpReceiver() as receiver:
        table = {"enabled": True, "endpoint": receiver.endpoint, "export_interval_s": 60}
        server = make_gateway(config={"plugins": {"otel": table}}, plugins=(otel,))
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        parent = "00f067aa0ba902b7"
        answer = ask(
            server, server.key("alice"), headers={"traceparent": f"00-{trace_id}-{parent}-01"}
        )
        assert answer.status_code == 200
        assert otel.force_flush(server.herd)
        spans = receiver.wait_spans(2)
    by_name = {s.name: s for s in spans}
    http = by_name["POST /v1/chat/completions"]
    assert http.trace_id.hex() == trace_id and http.parent_span_id.hex() == parent
    assert http.kind == 2  # SPAN_KIND_SERVER
    assert attributes(http)["http.response.status_code"] == 200
    assert attributes(http)["herd.tenant"] == "alice"
    chat = by_name["chat mock-1"]
    assert chat.trace_id == http.trace_id and chat.parent_span_id == http.span_id


def test_breaker_state_is_a_metric(make_gateway: Callable[..., GatewayServer]) -> None:
    from modelherd import ProviderError
    from modelherd.plugins.observability import alerts

    broken = MockModel().enqueue(*[ProviderError("upstream 500")] * 50)
    server = make_gateway(
        {"mock": broken, "spare": MockModel(default="from the spare")},
        config={
            "herd": {"retries": 0},
            "models": {"mock": {"provider": "mock", "fallbacks": ["spare"]}},
            "plugins": {"alerts": {"breaker_failures": 2, "status_file": False}},
        },
        plugins=(alerts,),
    )
    key = server.key()
    for _ in range(3):
        answer = ask(server, key)
        assert answer.json()["choices"][0]["message"]["content"] == "from the spare"
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert 'herd_breaker_state{model="mock"} 2.0' in text
