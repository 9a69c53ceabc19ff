"""Checks made before an engine loads a file, so a bad input is one clear line, not a crash.

llama.cpp's own failure says only "Failed to init server, please check the input
params." (xllamacpp) or aborts the process: we read the GGUF header first (is it a
GGUF, is it a language model) and compare the memory the load will need with the
memory free now.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelherd.errors import ProviderUnavailableError

#: ggml type id of a KV cache element -> the estimator's name for it
KV_TYPE_NAMES = {1: "f16", 8: "q8_0", 2: "q4_0"}


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What one load of a file needs: bytes before and after the slots' KV caches."""

    weights_and_overhead: int
    kv_per_slot: int
    #: the estimator's names for the file (model name, quantization)
    model_name: str

    def resident(self, parallel: int) -> int:
        return self.weights_and_overhead + self.kv_per_slot * parallel


def read_plan(path: Path, alias: str, n_ctx: int, type_k: int | None) -> LoadPlan:
    """The file's header, read without loading it; a file that is not a GGUF language
    model is a ProviderUnavailableError naming the file and the fix."""
    from modelherd.plugins.resources.gguf_estimate import estimate, kv_bytes_per_token, read_facts

    try:
        facts = read_facts(path)
    except ValueError as exc:
        raise ProviderUnavailableError(
            f"'{alias}' (llamacpp): {exc} — point path in [models.{alias}] at a GGUF "
            f"language model (a .gguf file from llama.cpp's convert or a model hub)"
        ) from None
    kv_type = KV_TYPE_NAMES.get(type_k if type_k is not None else 1, "f16")
    one = estimate(facts, n_ctx=n_ctx, kv_type=kv_type)
    kv_slot = int(kv_bytes_per_token(facts, kv_type) * n_ctx)
    return LoadPlan(
        weights_and_overhead=one.resident_at_load - one.kv_cache,
        kv_per_slot=kv_slot,
        model_name=facts.name,
    )


def free_memory() -> int:
    """Bytes a new load can take now (RAM: psutil's `available`)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(
    plan: LoadPlan, path: Path, alias: str, n_ctx: int, parallel: int, on_gpu: bool
) -> None:
    """Refuse a load that cannot fit in free RAM (on a GPU, the optimizer places it)."""
    if on_gpu:
        return
    need = plan.resident(parallel)
    free = free_memory()
    if need <= free:
        return
    gib = 1024**3
    raise ProviderUnavailableError(
        f"'{alias}' (llamacpp): {path} at n_ctx {n_ctx} x {parallel} slot(s) needs "
        f"{need / gib:.1f} GiB, {free / gib:.1f} GiB is free — lower n_ctx or parallel in "
        f"[models.{alias}] (`herd plan {alias}` shows what fits)"
    )
