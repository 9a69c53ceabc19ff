"""Where a model goes: layers on the GPU(s), context size, KV type, mmap/mlock.

Pure: takes the model's facts (gguf_estimate) and the devices' free memory
(device_memory) and returns a `Placement` that explains itself. The optimizer
plugin applies it; `herd plan` prints it.

Order of preference, best quality first: the asked context with an f16 KV cache,
then q8_0, then q4_0 KV (quantized KV needs flash attention, which we turn on),
then half the context, and so on down to `min_ctx`. Within each try, as many
layers as fit go to the GPU(s); the rest, and everything else, must fit in RAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from modelherd.plugins.resources.device_memory import Device
from modelherd.plugins.resources.gguf_estimate import (
    GPU_OVERHEAD,
    KV_ORDER,
    KV_TYPES,
    Estimate,
    MiB,
    ModelFacts,
    compute_buffer_bytes,
    estimate,
    kv_bytes_per_token,
)

GiB = 1024**3


def human(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


@dataclass
class Placement:
    """A decision and the numbers behind it."""

    facts: ModelFacts
    estimate: Estimate
    n_ctx: int
    kv_type: str
    gpu_layers: int  # repeating layers on the GPU(s), 0 .. n_layers
    gpu_bytes: int
    cpu_bytes: int
    gpu_free: int
    cpu_free: int
    fits: bool
    reason: str
    tensor_split: list[float] | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    devices: list[str] = field(default_factory=list)
    output_on_gpu: bool = False
    #: calls the load runs at once, each with its own n_ctx of KV (xllamacpp's slots)
    slots: int = 1

    @property
    def n_gpu_layers(self) -> int:
        """llama.cpp's `n_gpu_layers`: -1 means every layer and the output head."""
        return -1 if self.output_on_gpu else self.gpu_layers

    @property
    def full_offload(self) -> bool:
        return self.output_on_gpu

    def llamacpp_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "use_mmap": self.use_mmap,
            "use_mlock": self.use_mlock,
        }
        if self.kv_type != "f16":
            type_id = KV_TYPES[self.kv_type][0]
            opts.update(type_k=type_id, type_v=type_id, flash_attn=True)
        if self.tensor_split is not None:
            opts["tensor_split"] = self.tensor_split
        return opts

    def ollama_options(self) -> dict[str, Any]:
        # Ollama spreads layers over its GPUs itself (OLLAMA_SCHED_SPREAD); num_gpu is
        # the layer count, -1 lets it offload everything
        return {"num_ctx": self.n_ctx, "num_gpu": self.n_gpu_layers}

    def as_dict(self) -> dict[str, Any]:
        est = self.estimate
        return {
            "model": self.facts.name,
            "path": self.facts.path,
            "quantization": self.facts.quantization,
            "layers": self.facts.n_layers,
            "weights_bytes": est.weights,
            "kv_cache_bytes": est.kv_cache,
            "compute_bytes": est.compute,
            "overhead_bytes": est.overhead,
            "total_bytes": est.total,
            "n_ctx": self.n_ctx,
            "slots": self.slots,
            "kv_type": self.kv_type,
            "gpu_layers": self.gpu_layers,
            "n_gpu_layers": self.n_gpu_layers,
            "gpu_bytes": self.gpu_bytes,
            "cpu_bytes": self.cpu_bytes,
            "gpu_free_bytes": self.gpu_free,
            "cpu_free_bytes": self.cpu_free,
            "tensor_split": self.tensor_split,
            "use_mmap": self.use_mmap,
            "use_mlock": self.use_mlock,
            "fits": self.fits,
            "reason": self.reason,
            "devices": self.devices,
        }


def _ctx_steps(target: int, min_ctx: int) -> list[int]:
    steps = [target]
    while steps[-1] // 2 >= min_ctx:
        steps.append(steps[-1] // 2)
    return steps


def _try(
    facts: ModelFacts,
    gpus: list[Device],
    ram: Device,
    n_ctx: int,
    kv_type: str,
    gpu_reserve: int,
    n_batch: int,
    slots: int = 1,
) -> tuple[int, bool, int, int, list[Device]]:
    """Most layers on the GPUs for this context/KV type: (layers, output, gpu, cpu, used)."""
    # every slot holds its own n_ctx of KV on each layer
    kv_layer = kv_bytes_per_token(facts, kv_type, layers=1) * n_ctx * slots
    compute = compute_buffer_bytes(facts, n_ctx, n_batch)
    est = slot_estimate(facts, n_ctx, kv_type, n_batch, slots)
    usable = sorted(gpus, key=lambda d: d.free, reverse=True)
    best: tuple[int, bool, int, int, list[Device]] = (0, False, 0, est.total, [])
    # one GPU if the largest can hold it all, else all of them together
    for count in range(1, len(usable) + 1):
        chosen = usable[:count]
        budget = sum(max(0, d.free - gpu_reserve) for d in chosen)
        spent = (GPU_OVERHEAD + compute) * count
        layers = 0
        for size in facts.layer_bytes:
            if spent + size + kv_layer > budget:
                break
            spent += int(size + kv_layer)
            layers += 1
        output = layers == facts.n_layers and spent + facts.output_bytes <= budget
        if output:
            spent += facts.output_bytes
        on_cpu_layers = facts.n_layers - layers
        cpu = (
            facts.embedding_bytes
            + sum(facts.layer_bytes[layers:])
            + est.overhead
            + int(kv_layer * on_cpu_layers)
        )
        if not output:
            cpu += facts.output_bytes + compute
        if (layers, output) > best[:2]:
            best = (layers, output, int(spent), int(cpu), chosen)
        if output:
            break
    return best


def slot_estimate(
    facts: ModelFacts, n_ctx: int, kv_type: str, n_batch: int, slots: int
) -> Estimate:
    """`estimate` for a load with `slots` KV caches of n_ctx each (xllamacpp allocates
    n_ctx x parallel): the weights, buffers and overhead once, the KV once per slot."""
    est = estimate(facts, n_ctx, kv_type, n_batch)
    return replace(est, kv_cache=est.kv_cache * slots) if slots > 1 else est


def place(
    facts: ModelFacts,
    gpus: list[Device],
    ram: Device,
    *,
    n_ctx: int | None = None,
    min_ctx: int = 512,
    kv_types: tuple[str, ...] = KV_ORDER,
    gpu_reserve: int = 256 * MiB,
    n_batch: int = 512,
    mlock: bool = False,
    gpu_note: str = "",
    slots: int = 1,
) -> Placement:
    """Choose the best placement that fits; if none does, say what is short and by how much.
    `slots`: calls the engine runs at once, each with its own n_ctx of KV cache."""
    target = min(n_ctx or facts.context_length, facts.context_length)
    min_ctx = min(min_ctx, target)
    last: Placement | None = None
    for ctx in _ctx_steps(target, min_ctx):
        for kv in kv_types:
            layers, output, gpu_bytes, cpu_bytes, used = _try(
                facts, gpus, ram, ctx, kv, gpu_reserve, n_batch, slots
            )
            est = slot_estimate(facts, ctx, kv, n_batch, slots)
            fits = cpu_bytes <= ram.free
            gpu_free = sum(d.free for d in used) if used else sum(d.free for d in gpus)
            placement = Placement(
                facts=facts,
                estimate=est,
                n_ctx=ctx,
                kv_type=kv,
                gpu_layers=layers,
                gpu_bytes=gpu_bytes,
                cpu_bytes=cpu_bytes,
                gpu_free=gpu_free,
                cpu_free=ram.free,
                fits=fits,
                reason="",
                devices=[f"{d.kind}{d.index}: {d.name}" for d in used],
                output_on_gpu=output,
                slots=slots,
            )
            if len(used) > 1:
                total_free = sum(d.free for d in used) or 1
                split = [0.0] * (max(d.index for d in gpus) + 1)
                for d in used:
                    split[d.index] = round(d.free / total_free, 3)
                placement.tensor_split = split
            elif len(used) == 1 and used[0].index != 0:
                split = [0.0] * (used[0].index + 1)
                split[used[0].index] = 1.0
                placement.tensor_split = split
            # weights left on the CPU stay file-backed (mmap): paged in, shared with the
            # page cache, not copied; mlock pins them only when asked and RAM is ample
            placement.use_mmap = True
            placement.use_mlock = bool(mlock and cpu_bytes * 1.25 <= ram.free)
            placement.reason = _explain(placement, target, gpus, gpu_note)
            if fits:
                return placement
            last = placement
    assert last is not None
    return last


def _explain(p: Placement, target: int, gpus: list[Device], gpu_note: str) -> str:
    n = p.facts.n_layers
    shrunk = []
    if p.n_ctx < target:
        shrunk.append(f"context cut from {target} to {p.n_ctx}")
    if p.kv_type != "f16":
        shrunk.append(f"KV cache {p.kv_type}")
    tail = f" ({'; '.join(shrunk)} to fit)" if shrunk and p.fits else ""
    if not p.fits:
        short = p.cpu_bytes - p.cpu_free
        return (
            f"does not fit: needs {human(p.cpu_bytes)} of RAM beside "
            f"{p.gpu_layers}/{n} layers on GPU, {human(p.cpu_free)} free "
            f"({human(short)} short) — choose a smaller quantization, a smaller "
            f"n_ctx, or free memory"
        )
    if not gpus:
        why = f"no GPU ({gpu_note})" if gpu_note else "no GPU"
        return f"fits in RAM: {why}; {human(p.cpu_bytes)} of {human(p.cpu_free)} free{tail}"
    if p.output_on_gpu:
        where = ", ".join(p.devices)
        return f"fits: all {n} layers on {where}{tail}"
    return (
        f"partial offload: {p.gpu_layers}/{n} layers on GPU "
        f"({human(p.gpu_free)} free), the rest in RAM{tail}"
    )


def best_variant(candidates: list[tuple[str, Placement]]) -> tuple[str, Placement] | None:
    """The highest-quality variant (most weight bytes) that fits, preferring full offload."""
    fitting = [c for c in candidates if c[1].fits]
    if not fitting:
        return None
    full = [c for c in fitting if c[1].output_on_gpu]
    pool = full or fitting
    return max(pool, key=lambda c: (c[1].n_ctx, c[1].facts.weight_bytes))
