"""This checkout's kernel cost against another checkout's, in the same run.

    python bench/overhead_vs.py --baseline-python ../before/.venv/bin/python
    python bench/overhead_vs.py --baseline-python ../before/.venv/bin/python --rounds 5
    python bench/overhead_vs.py --baseline-python ../before/.venv/bin/python --disable logs,cost

The baseline is any other checkout installed in its own virtualenv (for example the
commit a round started from):

    git worktree add ../before 7bf69a3
    python3 -m venv ../before/.venv && ../before/.venv/bin/pip install -e ../before

Each round runs, in fresh child processes and alternating between the two
interpreters (a noisy neighbour slows both sides alike):

1. per-call overhead: `herd.chat` on a zero-latency MockModel with every installed
   default plugin, minus calling the MockModel directly (p50 over `--calls` calls);
2. `import modelherd` + loading every plugin, minus the dependencies' own import
   cost (pydantic with one model built, asyncio, anyio, pluggy, entry points) imported
   first in the same fresh process; `--import-runs` per round, the sides alternating.

Both children run this file with `--child`, so they measure the same way whatever
the baseline's own bench/ says; they use only the public API both versions share,
from an empty working directory (no plugins.toml). The ratios printed are this
checkout over the baseline: <= 1.00x means "not worse".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

#: the dependencies' own import (the floor), then modelherd's import and plugin load in
#: the same process: the second interval is modelherd's own share. One process per
#: measurement: subtracting a floor timed in another process added that process's
#: noise, which on this VM was larger than the figure (-20 to +120 ms a pair)
OWN_CODE = (
    "import time\n"
    "from pydantic import BaseModel\n"
    "class A(BaseModel):\n    x: int\n"
    "import asyncio, anyio, pluggy, importlib.metadata, tomllib, json, hashlib\n"
    "importlib.metadata.entry_points(group='modelherd')\n"
    "t = time.perf_counter()\n"
    "import modelherd; h = modelherd.Herd(env={}); h.pm; h.providers; h.agents\n"
    "print(time.perf_counter() - t)"
)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _child_overhead(calls: int, disable: list[str]) -> dict[str, float]:
    from modelherd import Herd
    from modelherd.config import load_config
    from modelherd.testing import MockModel, MockProvider
    from modelherd.types import ChatRequest, Message

    config = load_config()
    config.models["bench"] = {"provider": "mock", "model": "mock-1"}
    config.plugins["disable"] = disable
    provider = MockProvider()
    model = provider.add("bench", MockModel())
    herd = Herd(config, env={}, plugins=(provider,))
    await herd.start()
    request = ChatRequest(
        alias="bench", provider="mock", model="mock-1", messages=[Message(role="user", content="x")]
    )
    direct: list[float] = []
    through: list[float] = []
    for i in range(calls + 500):  # 500 warm-up calls, discarded
        t0 = time.perf_counter_ns()
        await model.chat(request)
        t1 = time.perf_counter_ns()
        await herd.chat("bench", f"question {i}", temperature=0)  # distinct: the miss path
        t2 = time.perf_counter_ns()
        if i >= 500:
            direct.append((t1 - t0) / 1000)
            through.append((t2 - t1) / 1000)
    plugins = sum(1 for r in herd.plugin_records if r.status == "loaded")
    await herd.aclose()
    return {
        "overhead_us": _pct(through, 0.5) - _pct(direct, 0.5),
        "herd_p50_us": _pct(through, 0.5),
        "plugins": plugins,
    }


def _run(python: str, *args: str, cwd: str) -> str:
    # bytecode caches on: an installed package runs with them (some shells turn them off)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # the call log, disk cache and trust store go under the run's empty directory, not
    # the user's data dir (the children used to append to the real logs.db)
    env["XDG_DATA_HOME"] = env["XDG_CACHE_HOME"] = os.path.join(cwd, "data")
    env["HERD_DATA_DIR"] = os.path.join(cwd, "data", "modelherd")
    out = subprocess.run(
        [python, *args], check=True, capture_output=True, text=True, env=env, cwd=cwd
    )
    return out.stdout.strip().splitlines()[-1]


def _own_import_ms(python: str, cwd: str) -> float:
    return float(_run(python, "-c", OWN_CODE, cwd=cwd)) * 1000


def _per_call(python: str, calls: int, cwd: str, disable: str) -> dict[str, float]:
    result: dict[str, float] = json.loads(
        _run(python, __file__, "--child", str(calls), "--disable", disable, cwd=cwd)
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-python", help="the other checkout's python (required)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument(
        "--import-runs",
        type=int,
        default=5,
        help="import runs per round and side, alternating; each round keeps their median",
    )
    parser.add_argument(
        "--disable",
        default="",
        help="plugins to leave out of the per-call figure, comma-separated (e.g. logs,cost): "
        "what one plugin costs is the difference between two runs",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        disable = [name for name in args.disable.split(",") if name]
        print(json.dumps(asyncio.run(_child_overhead(args.child, disable))))
        return
    if not args.baseline_python:
        parser.error("--baseline-python is required: the python of the checkout to compare with")

    sides = {"this": sys.executable, "baseline": args.baseline_python}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as empty:
        for python in sides.values():  # warm: bytecode caches, page cache
            _own_import_ms(python, empty)
        for _ in range(args.rounds):
            # the two sides alternate at every step: this VM's speed drifts 2-3x within
            # minutes, and what runs side by side sees the same speed
            for name, python in sides.items():
                runs[name].append(_per_call(python, args.calls, empty, args.disable))
            imports: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(args.import_runs):
                for name, python in sides.items():
                    imports[name].append(_own_import_ms(python, empty))
            for name in sides:
                runs[name][-1]["import_own_ms"] = statistics.median(imports[name])
    load = os.getloadavg()[0]

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    print(
        f"kernel cost, this checkout vs baseline ({args.rounds} interleaved rounds, load {load:.1f})"
    )
    print(f"  baseline: {args.baseline_python}")
    if args.disable:
        print(f"  plugins disabled for the per-call figure: {args.disable}")
    for key, label, unit in (
        ("overhead_us", "per-call overhead p50", "µs"),
        ("import_own_ms", "import + plugin load, own share", "ms"),
    ):
        this, base = median("this", key), median("baseline", key)
        each = " / ".join(f"{r[key]:.1f}" for r in runs["this"])
        each_base = " / ".join(f"{r[key]:.1f}" for r in runs["baseline"])
        # each round's two sides ran back to back: their ratio is the steadier figure
        paired = statistics.median(
            t[key] / b[key] for t, b in zip(runs["this"], runs["baseline"], strict=True)
        )
        verdict = "not worse" if this <= base * 1.0 else "WORSE"
        print(
            f"  {label:32s} this {this:7.1f} {unit} ({each})  baseline {base:7.1f} {unit} "
            f"({each_base})  ratio {this / base:.2f}x  {verdict}; "
            f"median of the rounds' ratios {paired:.2f}x"
        )
    print(
        f"  plugins loaded: this {int(median('this', 'plugins'))}, "
        f"baseline {int(median('baseline', 'plugins'))}"
    )


if __name__ == "__main__":
    main()
