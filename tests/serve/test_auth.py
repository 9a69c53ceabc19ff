"""The auth matrix: the key decides the tenant; every refusal in the vendor's shape."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from modelherd import OverloadedError, hookimpl
from modelherd.plugins.cache import memory as cache_memory
from modelherd.plugins.resources import tenants as tenants_plugin
from modelherd.plugins.serve.keys import FileKeyStore, token_hash
from modelherd.testing import MockModel

from .gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(60)
MSG = [{"role": "user", "content": "hi"}]


def ask(server: GatewayServer, key: str | None, model: str = "mock", **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=headers,
        json={"model": model, "messages": MSG, **kw},
        timeout=10,
    )


def test_no_key_bad_key_revoked_and_expired_are_401(gateway: GatewayServer) -> None:
    missing = ask(gateway, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    good = gateway.key()
    forged = good[:-4] + "AAAA"  # the right id, the wrong secret
    for bad in ("sk-not-ours", forged, "hk_ffffffffffff_" + "a" * 43):
        response = ask(gateway, bad)
        assert response.status_code == 401, bad
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert ask(gateway, good).status_code == 200
    store = gateway.gateway.auth.store
    assert isinstance(store, FileKeyStore)
    key_id = good.split("_")[1]
    store.revoke(key_id)
    revoked = ask(gateway, good)
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "revoked_api_key"
    soon = gateway.key(expires="1s")
    assert ask(gateway, soon).status_code == 200
    time.sleep(1.1)
    expired = ask(gateway, soon)
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0).models.list()


def test_keys_file_holds_hashes_only_and_is_private(gateway: GatewayServer) -> None:
    token = gateway.key("alice")
    store = gateway.gateway.auth.store
    assert isinstance(store, FileKeyStore)
    text = store.path.read_text()
    secret = token[len("hk_") + 12 + 1 :]  # the secret may itself contain "_"
    assert token not in text and secret not in text
    assert token_hash(token) in text
    assert os.stat(store.path).st_mode & 0o777 == 0o600


def test_a_model_outside_the_keys_list_is_403(gateway: GatewayServer) -> None:
    key = gateway.key(models=["other"])
    refused = ask(gateway, key, "mock")
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert "may not use model 'mock' — allowed: other" in refused.json()["error"]["message"]
    assert ask(gateway, key, "other").status_code == 200
    admin = gateway.key("ops", admin=True)
    as_admin = ask(gateway, admin, "other")
    assert as_admin.status_code == 403 and "admin key manages keys only" in as_admin.text


def test_another_tenants_cached_answer_is_never_served(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    model = MockModel()
    model.enqueue("alice's secret plan", "bob's own answer")
    server = make_gateway(
        {"mock": model},
        config={"plugins": {"cache_memory": {"ttl": 60}}},
        plugins=(cache_memory,),
    )
    alice, bob = server.key("alice"), server.key("bob")
    first = ask(server, alice, temperature=0)
    assert first.json()["choices"][0]["message"]["content"] == "alice's secret plan"
    again = ask(server, alice, temperature=0)
    assert again.headers["x-herd-cache"] == "memory"  # the cache works for alice …
    theirs = ask(server, bob, temperature=0)
    # … and bob, asking the same thing, gets his own upstream call
    assert theirs.headers["x-herd-cache"] == "miss"
    assert theirs.json()["choices"][0]["message"]["content"] == "bob's own answer"
    assert [r.tenant for r in model.history] == ["alice", "bob"]


def test_over_quota_is_429_with_retry_after(make_gateway: Callable[..., GatewayServer]) -> None:
    config = {
        "tenants": {
            "alice": {"tier": "basic", "requests_per_minute": 6, "burst_s": 10.0},
            "bob": {"tier": "basic"},
        }
    }
    server = make_gateway(config=config, plugins=(tenants_plugin,))
    alice, bob = server.key("alice"), server.key("bob")
    assert ask(server, alice).status_code == 200
    over = ask(server, alice)
    assert over.status_code == 429
    assert int(over.headers["Retry-After"]) >= 1
    assert over.json()["error"]["code"] == "quota_exceeded"
    assert "tenant 'alice' (basic) is over its requests_per_minute limit" in over.text
    assert ask(server, bob).status_code == 200  # another tenant is not affected
    with pytest.raises(openai.RateLimitError) as info:
        openai.OpenAI(
            base_url=f"{server.url}/v1", api_key=alice, max_retries=0
        ).chat.completions.create(model="mock", messages=MSG)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"]


def test_shedding_is_503_with_retry_after(make_gateway: Callable[..., GatewayServer]) -> None:
    class Shed:
        __name__ = "shed"

        @hookimpl
        def acquire_admission(self, request: Any, herd: Any) -> Any:
            raise OverloadedError("load is critical: low-priority call shed", retry_after=2.5)

    server = make_gateway(plugins=(Shed(),))
    shed = ask(server, server.key())
    assert shed.status_code == 503
    assert shed.headers["Retry-After"] == "3"
    assert shed.json()["error"]["code"] == "overloaded"


def test_admin_routes_need_an_admin_key(gateway: GatewayServer) -> None:
    tenant = gateway.key("alice")
    admin = gateway.key("ops", admin=True)
    url = f"{gateway.url}/admin/keys"
    assert httpx.get(url, timeout=5).status_code == 401
    assert (
        httpx.get(url, headers={"Authorization": f"Bearer {tenant}"}, timeout=5).status_code == 403
    )
    auth = {"Authorization": f"Bearer {admin}"}
    made = httpx.post(url, headers=auth, json={"tenant": "dave", "models": ["mock"]}, timeout=5)
    assert made.status_code == 201
    new_key = made.json()["key"]
    listed = httpx.get(url, headers=auth, timeout=5).json()["keys"]
    assert {k["tenant"] for k in listed} == {"alice", "ops", "dave"}
    assert all("sha256" not in k and "key" not in k for k in listed)
    assert ask(gateway, new_key).status_code == 200
    gone = httpx.delete(f"{url}/{made.json()['id']}", headers=auth, timeout=5)
    assert gone.json()["state"] == "revoked"
    assert ask(gateway, new_key).status_code == 401
    bad = httpx.post(url, headers=auth, json={"tenant": "a b"}, timeout=5)
    assert bad.status_code == 400 and "must be letters, digits" in bad.text


def test_a_spent_budget_is_429_budget_exceeded_with_retry_after(
    make_gateway: Callable[..., GatewayServer],
) -> None:
    from modelherd.errors import BudgetExceededError

    class Spent:
        __name__ = "spent"

        @hookimpl
        def acquire_admission(self, request: Any, herd: Any) -> Any:
            raise BudgetExceededError(
                "tenant 'alice' daily budget of 5.00 USD is spent — resets at 00:00 UTC",
                budget="tenant 'alice' daily",
                resets_at=time.time() + 3600,
                retry_after=3600.0,
            )

    server = make_gateway(plugins=(Spent(),))
    spent = ask(server, server.key())
    assert spent.status_code == 429
    assert spent.headers["Retry-After"] == "3600"
    assert spent.json()["error"]["code"] == "budget_exceeded"
    assert "daily budget of 5.00 USD is spent" in spent.json()["error"]["message"]
