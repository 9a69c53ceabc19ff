"""Placement decisions from facts and free memory, and NVML reading.

No GPU is lent to this task: the NVML tests replace the `pynvml` module's functions
with fakes at the boundary (the numbers a real H100 would report); they check our
use of the NVML API, not NVML itself.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from modelherd.plugins.resources import device_memory
from modelherd.plugins.resources.device_memory import Device, read_gpus
from modelherd.plugins.resources.gguf_estimate import (
    GPU_OVERHEAD,
    MiB,
    compute_buffer_bytes,
    kv_bytes_per_token,
    read_facts,
)
from modelherd.plugins.resources.optimizer.placement import best_variant, place

GiB = 1024**3


def ram(free_gib: float) -> Device:
    return Device("system RAM", "cpu", 0, 64 * GiB, int(free_gib * GiB))


def gpu(index: int, free_gib: float) -> Device:
    return Device(f"GPU{index}", "gpu", index, 80 * GiB, int(free_gib * GiB))


@pytest.fixture
def big(gguf_file: Callable[..., Path]) -> Path:
    # 24 layers x ~1.2 MiB of Q8_0 weights, 8k context (a 30 MB file)
    return gguf_file(
        n_layers=24, embd=256, heads=8, heads_kv=4, ff=1024, vocab=4096, ctx=8192, qtype="Q8_0"
    )


def test_cpu_only_fits_in_ram(big: Path) -> None:
    facts = read_facts(big)
    p = place(facts, [], ram(32), n_ctx=4096, gpu_note="NVML unavailable")
    assert p.fits and p.gpu_layers == 0 and p.n_ctx == 4096 and p.kv_type == "f16"
    assert p.llamacpp_options() == {
        "n_ctx": 4096,
        "n_gpu_layers": 0,
        "use_mmap": True,
        "use_mlock": False,
    }
    assert p.reason.startswith("fits in RAM: no GPU (NVML unavailable)")


def test_full_offload_on_a_big_gpu(big: Path) -> None:
    facts = read_facts(big)
    p = place(facts, [gpu(0, 40)], ram(8), n_ctx=8192)
    assert p.fits and p.gpu_layers == 24 and p.n_gpu_layers == -1
    assert p.tensor_split is None
    assert p.reason.startswith("fits: all 24 layers on gpu0: GPU0")


def test_partial_offload_counts_layers_that_fit(big: Path) -> None:
    facts = read_facts(big)
    per_layer = facts.layer_bytes[0] + kv_bytes_per_token(facts, layers=1) * 8192
    # room for the fixed GPU cost (overhead, compute buffer, reserve) plus 10.5 layers
    free = GPU_OVERHEAD + compute_buffer_bytes(facts, 8192) + 256 * MiB + 10.5 * per_layer
    p = place(facts, [Device("small", "gpu", 0, 8 * GiB, int(free))], ram(16), n_ctx=8192)
    assert p.fits and 0 < p.gpu_layers < 24
    assert p.gpu_layers == 10
    assert p.reason.startswith("partial offload: 10/24 layers on GPU")


def test_two_gpus_split_in_proportion_to_free_memory(big: Path) -> None:
    facts = read_facts(big)
    # each GPU alone is 1 MiB / half the weights short; together they have room
    single = place(facts, [gpu(0, 80)], ram(16), n_ctx=2048).gpu_bytes + 256 * MiB
    gpus = [gpu(0, (single - facts.weight_bytes // 2) / GiB), gpu(1, (single - MiB) / GiB)]
    p = place(facts, gpus, ram(16), n_ctx=2048)
    assert p.gpu_layers == 24 and p.tensor_split is not None
    assert p.tensor_split[1] > p.tensor_split[0]
    assert sum(p.tensor_split) == pytest.approx(1.0, abs=0.01)
    assert p.tensor_split[1] / p.tensor_split[0] == pytest.approx(
        gpus[1].free / gpus[0].free, rel=0.01
    )


def test_short_memory_quantizes_kv_then_cuts_context(big: Path) -> None:
    facts = read_facts(big)
    full = place(facts, [], ram(64), n_ctx=8192)
    # just too little for the f16 KV cache at 8k, enough with q8_0
    tight = ram((full.cpu_bytes - full.estimate.kv_cache * 0.4) / GiB)
    p = place(facts, [], tight, n_ctx=8192)
    assert p.fits and p.n_ctx == 8192 and p.kv_type == "q8_0"
    assert p.llamacpp_options()["type_k"] == 8 and p.llamacpp_options()["flash_attn"] is True
    assert "KV cache q8_0" in p.reason
    smaller = place(facts, [], ram((full.cpu_bytes - full.estimate.kv_cache) / GiB), n_ctx=8192)
    assert smaller.fits and smaller.n_ctx < 8192
    assert "context cut from 8192" in smaller.reason


def test_does_not_fit_says_how_much_is_short(big: Path) -> None:
    p = place(read_facts(big), [], ram(0.02), n_ctx=8192)
    assert not p.fits
    assert p.reason.startswith("does not fit: needs ")
    assert "short) — choose a smaller quantization, a smaller n_ctx, or free memory" in p.reason


def test_best_variant_prefers_quality_that_fits(gguf_file: Callable[..., Path]) -> None:
    kwargs = dict(n_layers=8, embd=1024, heads=8, heads_kv=8, ff=4096, vocab=2048)
    q8 = read_facts(gguf_file(qtype="Q8_0", **kwargs))
    q4 = read_facts(gguf_file(qtype="Q4_0", **kwargs))
    roomy = [gpu(0, 20)]
    plans = [
        ("m-q8", place(q8, roomy, ram(8), n_ctx=2048)),
        ("m-q4", place(q4, roomy, ram(8), n_ctx=2048)),
    ]
    assert best_variant(plans)[0] == "m-q8"
    # a GPU that holds only the Q4 variant completely
    need_q4 = place(q4, [gpu(0, 80)], ram(8), n_ctx=2048).gpu_bytes
    tight = [Device("g", "gpu", 0, 8 * GiB, need_q4 + 256 * MiB + 1)]
    plans = [
        ("m-q8", place(q8, tight, ram(8), n_ctx=2048)),
        ("m-q4", place(q4, tight, ram(8), n_ctx=2048)),
    ]
    assert best_variant(plans)[0] == "m-q4"
    assert best_variant([("x", place(q8, [], ram(0.01), n_ctx=2048))]) is None


# ---- NVML at the boundary (fake pynvml: no GPU is lent to this task) ---------------


class _NVMLError(Exception):
    pass


def _fake_pynvml(devices: list[tuple[str, int, int]], init_error: bool = False) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_error:
            raise _NVMLError("NVML Shared Library Not Found")

    mod.nvmlInit = init  # type: ignore[attr-defined]
    mod.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: devices[h][0].encode()  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=devices[h][1], free=devices[h][2], used=devices[h][1] - devices[h][2]
    )
    mod.calls = calls  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def nvidia_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the NVIDIA kernel driver is there, so NVML is asked (the fake one)."""
    monkeypatch.setattr(device_memory, "nvidia_driver_absent", lambda: False)


def test_driver_check_skips_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_memory.sys, "platform", "linux")
    monkeypatch.setattr(device_memory.os.path, "exists", lambda path: False)
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([("never asked", 1, 1)]))
    assert read_gpus() == ([], "no NVIDIA driver (/proc/driver/nvidia is absent)")


def test_nvml_gpus_read_through_pynvml(
    monkeypatch: pytest.MonkeyPatch, nvidia_driver: None
) -> None:
    fake = _fake_pynvml(
        [
            ("NVIDIA H100 80GB HBM3", 80 * GiB, 70 * GiB),
            ("NVIDIA H100 80GB HBM3", 80 * GiB, 20 * GiB),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus, why = read_gpus()
    assert why == ""
    assert [(g.name, g.index, g.free) for g in gpus] == [
        ("NVIDIA H100 80GB HBM3", 0, 70 * GiB),
        ("NVIDIA H100 80GB HBM3", 1, 20 * GiB),
    ]
    assert fake.calls == ["init", "shutdown"]


def test_no_nvml_degrades_to_ram(monkeypatch: pytest.MonkeyPatch, nvidia_driver: None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([], init_error=True))
    gpus, ram_device, why = device_memory.read_devices(reserve=1 * GiB)
    assert gpus == [] and why == "NVML unavailable: NVML Shared Library Not Found"
    assert ram_device.kind == "cpu" and 0 < ram_device.free < ram_device.total
    monkeypatch.setitem(sys.modules, "pynvml", None)  # package not installed
    gpus, why = read_gpus()
    assert gpus == [] and 'pip install "modelherd[gpu]"' in why


def test_slots_multiply_the_kv_cache_and_can_cut_the_context(big: Path) -> None:
    facts = read_facts(big)
    one = place(facts, [], ram(32), n_ctx=4096)
    eight = place(facts, [], ram(32), n_ctx=4096, slots=8)
    assert eight.slots == 8 and eight.estimate.kv_cache == 8 * one.estimate.kv_cache
    assert eight.estimate.weights == one.estimate.weights
    assert eight.cpu_bytes - one.cpu_bytes == 7 * one.estimate.kv_cache
    # RAM for one slot's KV at 4096 but not eight: the context is cut to fit them all
    tight = ram((one.cpu_bytes + 3 * one.estimate.kv_cache) / GiB)
    assert place(facts, [], tight, n_ctx=4096).n_ctx == 4096
    cut = place(facts, [], tight, n_ctx=4096, slots=8)
    assert cut.fits and (cut.n_ctx < 4096 or cut.kv_type != "f16")
