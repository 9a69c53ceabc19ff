"""How much memory a GGUF model needs: pure functions, no llama.cpp, no GPU.

`read_facts(path)` reads the file's metadata and tensor table (the `gguf`
package's format constants and quantization sizes, imported inside the
function). `estimate(facts, ...)` turns the facts into bytes:

- weights: the real byte size of every tensor, by its actual quantization type
  (a Q4_K tensor costs 144 bytes per 256 values ≈ 0.5625 B/param, Q8_0 34/32,
  F16 2), grouped per transformer layer so a partial GPU offload can be priced;
- KV cache: per token, n_layers × n_head_kv × (key_length + value_length) elements
  of the KV type (f16 = 2 B, q8_0 = 34/32 B, q4_0 = 18/32 B) — exactly what
  llama.cpp allocates;
- compute buffer: llama.cpp's worst-case graph reservation for one micro-batch,
  max(4·batch·(1 + 4·embd + ctx·(1 + heads)), 4·batch·(embd + vocab)) bytes (the
  formula Ollama uses; within 3 % of llama.cpp's own report for SmolLM2);
- overhead: a runtime constant plus the vocabulary tables (calibrated on the
  embedded SmolLM2 file, see docs/performance.md).
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024

#: llama.cpp KV cache element types: name -> (ggml type id, bytes per element)
KV_TYPES: dict[str, tuple[int, float]] = {
    "f16": (1, 2.0),
    "q8_0": (8, 34 / 32),
    "q4_0": (2, 18 / 32),
}
#: preference order when the context does not fit: best quality first
KV_ORDER = ("f16", "q8_0", "q4_0")

#: fixed runtime cost of a loaded llama.cpp context (threads, graph metadata)
RUNTIME_OVERHEAD = 6 * MiB
#: vocabulary tables per token (strings, scores, piece cache, BPE merges)
VOCAB_BYTES_PER_TOKEN = 330
#: extra a GPU backend needs per device (CUDA context, cuBLAS workspace)
GPU_OVERHEAD = 400 * MiB

_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass
class ModelFacts:
    """What the estimator needs to know about a model, from GGUF or Ollama metadata."""

    name: str
    architecture: str
    n_layers: int
    context_length: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    vocab_size: int
    #: bytes of each transformer layer's tensors, index = layer number
    layer_bytes: list[int]
    #: bytes of the output head (output.weight, output_norm); offloaded last
    output_bytes: int
    #: bytes of the token embedding (llama.cpp keeps it on the CPU)
    embedding_bytes: int
    bytes_by_type: dict[str, int] = field(default_factory=dict)
    params_by_type: dict[str, int] = field(default_factory=dict)
    path: str | None = None

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes + self.embedding_bytes

    @property
    def n_params(self) -> int:
        return sum(self.params_by_type.values())

    @property
    def quantization(self) -> str:
        """The type holding most of the weights (e.g. Q4_1), for display."""
        if not self.bytes_by_type:
            return "?"
        return max(self.bytes_by_type.items(), key=lambda kv: kv[1])[0]


@dataclass
class Estimate:
    """Bytes a model needs at a given context size and KV type."""

    weights: int
    kv_cache: int
    compute: int
    overhead: int
    n_ctx: int
    kv_type: str

    @property
    def total(self) -> int:
        """What to budget: everything, the compute buffer at its worst case."""
        return self.weights + self.kv_cache + self.compute + self.overhead

    @property
    def resident_at_load(self) -> int:
        """What a CPU load makes resident before the first batch runs.

        llama.cpp reserves the compute buffer at load but, on the CPU, its pages
        are only touched by the batches that need them.
        """
        return self.weights + self.kv_cache + self.overhead


_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class _HeaderReader:
    """A streaming reader of the GGUF header: metadata and tensor table, no data.

    gguf.GGUFReader builds a numpy view for every array element, which takes ~3 s
    on a 49k-token vocabulary; this walks the same format (gguf's constants and
    quantization sizes) and keeps only array lengths. tests/resources checks both
    agree on every tensor of the embedded model and of synthetic files.
    """

    def __init__(self, data: Any) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        raw = bytes(self.data[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            if item_type in _SCALAR and count <= 4096:
                return [self.unpack(_SCALAR[item_type]) for _ in range(count)]
            if item_type in _SCALAR:
                self.pos += struct.calcsize(_SCALAR[item_type]) * count
            elif item_type == _STRING:  # skip without decoding: the hot loop of a vocab
                data, pos, unpack = self.data, self.pos, struct.unpack_from
                for _ in range(count):
                    pos += 8 + unpack("<Q", data, pos)[0]
                self.pos = pos
            else:
                for _ in range(count):
                    self.value(item_type)
            return _Skipped(count)
        if vtype not in _SCALAR:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.unpack(_SCALAR[vtype])


@dataclass
class _Skipped:
    """A long array we only counted (token lists, merges)."""

    count: int


@dataclass
class _Tensor:
    name: str
    type_name: str
    n_elements: int
    n_bytes: int


def read_header(path: str | Path) -> tuple[dict[str, Any], list[_Tensor]]:
    """The metadata key/values (long arrays as their length) and the tensor table."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            reader = _HeaderReader(data)
            if bytes(data[:4]) != b"GGUF":
                raise ValueError("bad magic")
            reader.pos = 4
            version = reader.unpack("<I")
            if version not in (2, 3):
                raise ValueError(f"unsupported GGUF version {version}")
            n_tensors = reader.unpack("<Q")
            n_kv = reader.unpack("<Q")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = reader.string()
                meta[key] = reader.value(reader.unpack("<I"))
            tensors: list[_Tensor] = []
            for _ in range(n_tensors):
                name = reader.string()
                n_dims = reader.unpack("<I")
                n_elements = 1
                for _ in range(n_dims):
                    n_elements *= reader.unpack("<Q")
                qtype = GGMLQuantizationType(reader.unpack("<I"))
                reader.unpack("<Q")  # data offset
                block, type_size = GGML_QUANT_SIZES[qtype]
                n_bytes = n_elements // block * type_size
                tensors.append(_Tensor(name, qtype.name, n_elements, n_bytes))
    except (OSError, ValueError, struct.error) as exc:
        raise ValueError(f"{path} is not a readable GGUF file ({exc})") from None
    return meta, tensors


def read_facts(path: str | Path) -> ModelFacts:
    """Read a GGUF file's metadata and tensor table (no tensor data is loaded)."""
    meta, tensors = read_header(path)
    arch = str(meta.get("general.architecture") or "llama")

    def arch_int(key: str, default: int | None = None) -> int | None:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer arrays (some archs): take the max
            value = max(value) if value else None
        if isinstance(value, _Skipped):
            value = None
        return int(value) if value is not None else default

    n_layers = arch_int("block_count")
    embd = arch_int("embedding_length")
    heads = arch_int("attention.head_count")
    if n_layers is None or embd is None or heads is None:
        raise ValueError(
            f"{path}: GGUF metadata lacks {arch}.block_count / embedding_length / "
            f"attention.head_count — is it a language model?"
        )
    heads_kv = arch_int("attention.head_count_kv", heads) or heads
    head_dim = embd // heads if heads else 0
    key_length = arch_int("attention.key_length", head_dim) or head_dim
    value_length = arch_int("attention.value_length", head_dim) or head_dim
    ctx = arch_int("context_length", 2048) or 2048
    tokens = meta.get("tokenizer.ggml.tokens")
    n_tokens = tokens.count if isinstance(tokens, _Skipped) else len(tokens or [])
    vocab = arch_int("vocab_size") or n_tokens

    layer_bytes = [0] * n_layers
    output_bytes = embedding_bytes = 0
    by_type: dict[str, int] = {}
    params: dict[str, int] = {}
    for tensor in tensors:
        size = tensor.n_bytes
        by_type[tensor.type_name] = by_type.get(tensor.type_name, 0) + size
        params[tensor.type_name] = params.get(tensor.type_name, 0) + tensor.n_elements
        match = _LAYER.match(tensor.name)
        if match and int(match.group(1)) < n_layers:
            layer_bytes[int(match.group(1))] += size
        elif tensor.name.startswith("token_embd"):
            embedding_bytes += size
        else:
            output_bytes += size
    name = str(meta.get("general.name") or Path(path).stem)
    return ModelFacts(
        name=name,
        architecture=arch,
        n_layers=n_layers,
        context_length=ctx,
        embedding_length=embd,
        head_count=heads,
        head_count_kv=heads_kv,
        key_length=key_length,
        value_length=value_length,
        vocab_size=vocab,
        layer_bytes=layer_bytes,
        output_bytes=output_bytes,
        embedding_bytes=embedding_bytes,
        bytes_by_type=by_type,
        params_by_type=params,
        path=str(path),
    )


def kv_bytes_per_token(facts: ModelFacts, kv_type: str = "f16", layers: int | None = None) -> float:
    """KV cache bytes per token of context, for `layers` layers (default: all)."""
    if kv_type not in KV_TYPES:
        raise ValueError(f"unknown KV type '{kv_type}' — use one of {', '.join(KV_TYPES)}")
    n = facts.n_layers if layers is None else layers
    elements = facts.head_count_kv * (facts.key_length + facts.value_length)
    return n * elements * KV_TYPES[kv_type][1]


def compute_buffer_bytes(facts: ModelFacts, n_ctx: int, n_batch: int = 512) -> int:
    """llama.cpp's worst-case compute graph reservation for one micro-batch."""
    attention = 4 * n_batch * (1 + 4 * facts.embedding_length + n_ctx * (1 + facts.head_count))
    logits = 4 * n_batch * (facts.embedding_length + facts.vocab_size)
    return max(attention, logits)


def overhead_bytes(facts: ModelFacts) -> int:
    return RUNTIME_OVERHEAD + facts.vocab_size * VOCAB_BYTES_PER_TOKEN


def estimate(
    facts: ModelFacts, n_ctx: int | None = None, kv_type: str = "f16", n_batch: int = 512
) -> Estimate:
    """Memory for the whole model in one place (all on CPU, or all on one GPU)."""
    ctx = n_ctx or facts.context_length
    return Estimate(
        weights=facts.weight_bytes,
        kv_cache=int(kv_bytes_per_token(facts, kv_type) * ctx),
        compute=compute_buffer_bytes(facts, ctx, n_batch),
        overhead=overhead_bytes(facts),
        n_ctx=ctx,
        kv_type=kv_type,
    )


#: bytes per parameter by Ollama's `quantization_level` (for /api/show without tensors)
OLLAMA_BYTES_PER_PARAM = {
    "F32": 4.0,
    "F16": 2.0,
    "BF16": 2.0,
    "Q8_0": 34 / 32,
    "Q6_K": 210 / 256,
    "Q5_K_M": 176 / 256,
    "Q5_K_S": 176 / 256,
    "Q5_0": 22 / 32,
    "Q5_1": 24 / 32,
    "Q4_K_M": 144 / 256,
    "Q4_K_S": 144 / 256,
    "Q4_0": 18 / 32,
    "Q4_1": 20 / 32,
    "Q3_K_M": 110 / 256,
    "Q3_K_S": 110 / 256,
    "Q3_K_L": 110 / 256,
    "Q2_K": 84 / 256,
}


def facts_from_ollama_show(name: str, show: dict[str, Any]) -> ModelFacts:
    """Facts from Ollama's `/api/show` answer (model_info + details).

    /api/show gives the architecture's keys like GGUF metadata, but not each
    tensor's type, so weights are priced from the parameter count and the
    quantization level, spread evenly over the layers.
    """
    info = show.get("model_info") or {}
    details = show.get("details") or {}
    arch = str(info.get("general.architecture") or details.get("family") or "llama")

    def get(key: str, default: int = 0) -> int:
        value = info.get(f"{arch}.{key}")
        return int(value) if value is not None else default

    n_layers = get("block_count")
    embd = get("embedding_length")
    heads = get("attention.head_count")
    if not (n_layers and embd and heads):
        raise ValueError(
            f"ollama model '{name}': /api/show has no {arch}.block_count / "
            f"embedding_length / attention.head_count"
        )
    heads_kv = get("attention.head_count_kv", heads)
    head_dim = embd // heads
    quant = str(details.get("quantization_level") or "Q4_K_M").upper()
    per_param = OLLAMA_BYTES_PER_PARAM.get(quant, 144 / 256)
    n_params = int(info.get("general.parameter_count") or 0)
    vocab = get("vocab_size") or len(info.get("tokenizer.ggml.tokens") or []) or 32000
    weights = int(n_params * per_param)
    embedding = int(vocab * embd * per_param)
    per_layer = max(0, weights - 2 * embedding) // n_layers
    return ModelFacts(
        name=name,
        architecture=arch,
        n_layers=n_layers,
        context_length=get("context_length", 2048),
        embedding_length=embd,
        head_count=heads,
        head_count_kv=heads_kv,
        key_length=get("attention.key_length", head_dim),
        value_length=get("attention.value_length", head_dim),
        vocab_size=vocab,
        layer_bytes=[per_layer] * n_layers,
        output_bytes=embedding,
        embedding_bytes=embedding,
        bytes_by_type={quant: weights},
        params_by_type={quant: n_params},
    )
