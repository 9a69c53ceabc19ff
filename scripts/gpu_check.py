"""One short, prepared check of the GPU paths, for a session that is lent a GPU.

    python scripts/gpu_check.py --json-out "$OUT/gpu_check.json"

It prints and records:
1. what NVML reports (modelherd's own reader, `plugins/resources/device_memory.py`);
2. the optimizer's placement for the embedded SmolLM2 GGUF on that device;
3. whether this llama-cpp-python build can offload to the GPU at all (the PyPI source
   build is CPU-only unless built with CMAKE_ARGS="-DGGML_CUDA=on");
4. if it can: NVML-measured GPU memory growth when the model loads with every layer
   offloaded, against the estimate (issue 7 asks for within ±15 %), and tokens/s.

On a machine without a GPU it says so and exits 0 — the script itself is exercised
here on CPU; the GPU figures need a lent machine (see docs/resources.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def nvml_used(index: int) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json-out", type=Path, help="also write the findings here")
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args()

    from modelherd.plugins.providers.llamacpp import smollm2_path
    from modelherd.plugins.resources.device_memory import read_devices
    from modelherd.plugins.resources.gguf_estimate import estimate, read_facts
    from modelherd.plugins.resources.optimizer.placement import place

    report: dict[str, Any] = {"python": sys.version.split()[0]}
    gpus, ram, why = read_devices()
    report["gpus"] = [vars(g) for g in gpus]
    report["no_gpu_reason"] = why
    print(f"NVML: {len(gpus)} GPU(s) {why}")
    for gpu in gpus:
        print(
            f"  [{gpu.index}] {gpu.name}: {gpu.free / 2**30:.2f} of {gpu.total / 2**30:.2f} GiB free"
        )

    path = smollm2_path()
    if path is None:
        print('the embedded GGUF is missing: pip install "modelherd[local]"')
        return 1
    facts = read_facts(path)
    est = estimate(facts, n_ctx=args.n_ctx)
    placement = place(facts, gpus, ram, n_ctx=args.n_ctx)
    report["estimate_bytes"] = {
        "weights": est.weights,
        "kv_cache": est.kv_cache,
        "compute": est.compute,
        "overhead": est.overhead,
        "total": est.total,
    }
    report["placement"] = placement.as_dict()
    print(f"estimate: total {est.total / 2**20:.1f} MiB; placement: {placement.as_dict()}")

    import llama_cpp

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    report["llama_cpp_version"] = llama_cpp.__version__
    report["llama_cpp_gpu_offload"] = offload
    print(f"llama-cpp-python {llama_cpp.__version__}: GPU offload supported = {offload}")

    if gpus and offload:
        before = nvml_used(0)
        started = time.perf_counter()
        llama = llama_cpp.Llama(
            model_path=str(path), n_ctx=args.n_ctx, n_gpu_layers=-1, verbose=False
        )
        load_s = time.perf_counter() - started
        llama.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        after = nvml_used(0)
        t0 = time.perf_counter()
        out = llama.create_chat_completion(
            messages=[{"role": "user", "content": "Write a paragraph about rivers."}],
            max_tokens=128,
            temperature=0.0,
        )
        rate = out["usage"]["completion_tokens"] / (time.perf_counter() - t0)
        grown = (after - before) if before is not None and after is not None else None
        report.update(load_s=load_s, nvml_growth_bytes=grown, tokens_per_s=rate)
        if grown:
            ratio = est.total / grown
            report["estimate_over_measured"] = ratio
            print(
                f"NVML growth {grown / 2**20:.1f} MiB vs estimate {est.total / 2**20:.1f} MiB "
                f"= {ratio:.2f}x (target within ±15 %)"
            )
        print(f"load {load_s:.2f}s, {rate:.1f} tok/s on GPU")
    elif gpus:
        print(
            "this llama-cpp-python build is CPU-only: rebuild with "
            'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-binary '
            "llama-cpp-python llama-cpp-python to measure offload"
        )
    else:
        print("no GPU here: the NVML and offload figures need a lent GPU machine")

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
