"""Cache keys: everything that changes the answer is in, nothing else is, and it is cheap."""

from __future__ import annotations

import time
from typing import Any

import pytest
from modelherd.cache import coalesce_key, is_deterministic, request_key
from modelherd.stash import Stash, StashKey
from modelherd.testing import make_herd
from modelherd.types import ChatRequest, Message
from pydantic import BaseModel


def req(content: str = "hi", **kw: Any) -> ChatRequest:
    base: dict[str, Any] = {
        "alias": "a",
        "provider": "mock",
        "model": "m",
        "messages": [Message(role="user", content=content)],
    }
    options = kw.pop("options", {})
    return ChatRequest(**base, options=options, **kw)


def test_message_fields_are_pinned() -> None:
    # request_key hashes these (cache._message_key): a new Message field must join the key
    assert set(Message.model_fields) == {"role", "content", "tool_calls", "tool_call_id", "name"}, (
        "Message gained a field: add it to modelherd.cache.request_key"
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"temperature": 0}, {"temperature": 0, "seed": 1}),
        ({"max_tokens": 10}, {"max_tokens": 11}),
        ({"stop": ["\n"]}, {"stop": ["."]}),
        (
            {"tools": [{"name": "f", "parameters": {"type": "object"}}]},
            {"tools": [{"name": "g", "parameters": {"type": "object"}}]},
        ),
        (
            {"response_format": {"type": "json_object", "schema": {"a": 1}}},
            {"response_format": {"type": "json_object", "schema": {"a": 2}}},
        ),
        ({"top_p": 0.5}, {}),
        ({"temperature": 0}, {"temperature": "0"}),
    ],
)
def test_output_changing_options_change_the_key(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert request_key(req(options=a)) != request_key(req(options=b))


def test_what_does_not_change_the_answer_stays_out() -> None:
    plain = request_key(req(options={"temperature": 0}))
    noisy = {"temperature": 0, "keep_alive": "5m", "n_gpu_layers": 9}
    assert request_key(req(options=noisy)) == plain
    # the stash, agent, priority, timeout and the cache mode are not part of the request's meaning
    stash = Stash()
    stash[StashKey[object]()] = object()
    assert (
        request_key(
            req(
                options={"temperature": 0},
                agent="x",
                priority=5,
                timeout=3,
                cache="no-store",
                stash=stash,
            )
        )
        == plain
    )
    # nested dict order does not matter
    fmt1 = {"type": "json_object", "schema": {"a": 1, "b": 2}}
    fmt2 = {"schema": {"b": 2, "a": 1}, "type": "json_object"}
    k1 = request_key(req(options={"response_format": fmt1}))
    k2 = request_key(req(options={"response_format": fmt2}))
    assert k1 == k2


def test_provider_model_messages_and_roles_change_the_key() -> None:
    base = request_key(req())
    assert request_key(req("hi there")) != base
    other = req()
    assert request_key(other.model_copy(update={"provider": "x"})) != base
    assert request_key(other.model_copy(update={"model": "m2"})) != base
    system = other.model_copy(update={"messages": [Message(role="system", content="hi")]})
    assert request_key(system) != base
    # message boundaries count: ["ab"] is not ["a", "b"]
    two = other.model_copy(
        update={"messages": [Message(role="user", content="h"), Message(role="user", content="i")]}
    )
    assert request_key(two) != base


def test_tenants_never_share_a_key() -> None:
    a = request_key(req(tenant="alice"))
    b = request_key(req(tenant="bob"))
    assert a != b
    assert a.startswith("t=alice:") and b.startswith("t=bob:")
    # no tenant is its own namespace: neither "" nor "default" nor "-" can name it
    none = request_key(req())
    assert none.startswith("-:")
    others = {request_key(req(tenant=t)) for t in ("", "default", "-", "-:x")}
    assert none not in others and len(others) == 4
    # a name cannot reach into another namespace either
    assert request_key(req(tenant="a:b")).startswith("t=a%3Ab:")


def test_pydantic_schema_classes_key_by_schema_not_name() -> None:
    class Answer(BaseModel):
        action: str

    first = Answer

    class Answer(BaseModel):  # type: ignore[no-redef]  # same name, other schema
        action: int

    assert request_key(req(options={"response_format": first})) != request_key(
        req(options={"response_format": Answer})
    )


def test_unknown_objects_never_collide() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "same"

    one, two = req(options={"x": [Opaque()]}), req(options={"x": [Opaque()]})
    assert request_key(one) != request_key(two)


def test_deterministic_rules() -> None:
    assert is_deterministic(req())
    assert is_deterministic(req(options={"temperature": 0.0}))
    assert is_deterministic(req(options={"temperature": 0.8, "seed": 3}))
    assert not is_deterministic(req(options={"temperature": 0.8}))
    assert coalesce_key(req(options={"temperature": 0.8})) is None


def test_key_is_cheap() -> None:
    herd = make_herd()
    request = herd.build_request(
        "mock",
        "What is the price of BTC today? Answer briefly.",
        temperature=0,
        max_tokens=64,
        stop=["\n"],
    )
    timings = []
    for _ in range(2000):
        start = time.perf_counter()
        request_key(request)
        timings.append(time.perf_counter() - start)
    timings.sort()
    p50 = timings[len(timings) // 2]
    # ~3 µs here; the bound is loose so a busy CI box does not flake
    assert p50 < 50e-6, f"request_key p50 {p50 * 1e6:.1f} µs"
