"""Fixtures for the resources tests: synthetic GGUF files and a real redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def write_gguf(
    path: Path,
    *,
    n_layers: int = 4,
    embd: int = 256,
    heads: int = 8,
    heads_kv: int = 2,
    ctx: int = 4096,
    vocab: int = 1024,
    ff: int = 512,
    qtype: str = "Q8_0",
    out_type: str = "F16",
) -> Path:
    """A llama-architecture GGUF with zero weights of the given quantization types."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"synthetic-{qtype}-{n_layers}")
    writer.add_block_count(n_layers)
    writer.add_context_length(ctx)
    writer.add_embedding_length(embd)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads_kv)
    writer.add_vocab_size(vocab)
    writer.add_token_list([f"t{i}" for i in range(vocab)])

    def tensor(name: str, rows: int, cols: int, type_name: str) -> None:
        qt = gguf.GGMLQuantizationType[type_name]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        if type_name in ("F32", "F16"):
            dtype = np.float32 if type_name == "F32" else np.float16
            writer.add_tensor(name, np.zeros((rows, cols), dtype=dtype))
        else:
            data = np.zeros((rows, cols // block * size), dtype=np.uint8)
            writer.add_tensor(name, data, raw_dtype=qt)

    head_dim = embd // heads
    tensor("token_embd.weight", vocab, embd, qtype)
    for i in range(n_layers):
        tensor(f"blk.{i}.attn_norm.weight", 1, embd, "F32")
        tensor(f"blk.{i}.attn_q.weight", embd, embd, qtype)
        tensor(f"blk.{i}.attn_k.weight", heads_kv * head_dim, embd, qtype)
        tensor(f"blk.{i}.attn_v.weight", heads_kv * head_dim, embd, qtype)
        tensor(f"blk.{i}.attn_output.weight", embd, embd, qtype)
        tensor(f"blk.{i}.ffn_gate.weight", ff, embd, qtype)
        tensor(f"blk.{i}.ffn_up.weight", ff, embd, qtype)
        tensor(f"blk.{i}.ffn_down.weight", embd, ff, qtype)
    tensor("output_norm.weight", 1, embd, "F32")
    tensor("output.weight", vocab, embd, out_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_file(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(**kwargs: object) -> Path:
        return write_gguf(tmp_path / f"model-{next(counter)}.gguf", **kwargs)  # type: ignore[arg-type]

    return make


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, stopped by its PID afterwards."""
    if not Path(REDIS).exists():
        pytest.skip(
            "redis-server is not installed — apt-get install redis-server "
            "(or brew install redis) to run the cross-process quota tests"
        )
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start within 10s")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
