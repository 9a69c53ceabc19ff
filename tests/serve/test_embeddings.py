"""POST /v1/embeddings through `herd.embed`, with the official openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest
from modelherd.testing import MockModel

from .gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(60)


def test_embeddings_through_the_herd_in_float_and_base64(gateway: GatewayServer) -> None:
    key = gateway.key("alice")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=10)
    texts = ["buy low", "sell high"]
    # the SDK asks for base64 by default and decodes it
    got = client.embeddings.create(model="mock", input=texts)
    expected = gateway.run(gateway.herd.embed("mock", texts, tenant="alice")).vectors
    assert [d.index for d in got.data] == [0, 1]
    for item, vector in zip(got.data, expected, strict=True):
        assert item.embedding == pytest.approx(vector, abs=1e-6)
    as_float = client.embeddings.create(model="mock", input="buy low", encoding_format="float")
    assert as_float.data[0].embedding == pytest.approx(expected[0], abs=1e-6)
    model = gateway.herd.get_model("mock")
    assert isinstance(model, MockModel)
    assert {r.tenant for r in model.embed_history} == {"alice"}
    assert got.usage.prompt_tokens == 4


def test_embeddings_refusals(gateway: GatewayServer) -> None:
    url = f"{gateway.url}/v1/embeddings"
    only_other = {"Authorization": f"Bearer {gateway.key(models=['other'])}"}
    refused = httpx.post(url, headers=only_other, json={"model": "mock", "input": "x"}, timeout=5)
    assert refused.status_code == 403
    auth = {"Authorization": f"Bearer {gateway.key()}"}
    bad = httpx.post(url, headers=auth, json={"model": "mock", "input": [1, 2]}, timeout=5)
    assert bad.status_code == 400 and "must be a string or a non-empty list" in bad.text
    odd = httpx.post(url, headers=auth, json={"model": "mock", "input": "x", "n": 2}, timeout=5)
    assert odd.status_code == 400 and "unsupported parameter(s): n" in odd.text
    assert httpx.post(url, json={"model": "mock", "input": "x"}, timeout=5).status_code == 401
