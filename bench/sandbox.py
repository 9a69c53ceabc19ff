"""The rbi jail's cost per run: bubblewrap jail vs a plain child process, same run.

    python bench/sandbox.py [--rounds 10] [--backtest]

Part 1 starts `python -I -S -B` on a script that returns one line through the result
pipe, through the same capture code (agents/jail.py `run_captured`): once as a plain
child process, once inside the jail (prlimit + bwrap + pids cgroup where one can be
made). Rounds are interleaved so a noisy box hits both alike; the figure is the
median wall time of each, the difference (the jail's startup cost) and the ratio.
Part 2 (--backtest) does the same with the real rbi harness (pandas + backtesting.py
import and a 180-candle SMA-cross backtest), where the interpreter's imports dominate.
Target: the jail adds <= 50 ms per run (a backtest round takes seconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from modelherd.agents import jail

SCRIPT = "import os, sys\nos.write(int(sys.argv[2]), b'{}')\n"


def once(jailed: bool, folder: Path) -> float:
    t0 = time.perf_counter()
    run = jail.run_python({"main.py": SCRIPT}, "main.py", folder, jail.JailLimits(), jailed=jailed)
    elapsed = time.perf_counter() - t0
    if run.captured.returncode != 0 or run.captured.result != b"{}":
        raise SystemExit(f"run failed: {run.captured.stderr[-500:]!r}")
    return elapsed


def backtest(jailed: bool, folder: Path) -> float:
    from modelherd.agents.rbi_agent import EXAMPLE_STRATEGY
    from modelherd.agents.sandbox import Limits, run_backtest

    sample = (Path(__file__).resolve().parents[1] / "agents" / "data" / "BTC_1d.csv").read_text()
    t0 = time.perf_counter()
    result = run_backtest(EXAMPLE_STRATEGY, sample, folder, Limits(), jailed=jailed)
    elapsed = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"backtest failed: {result.error}")
    return elapsed


def compare(name: str, fn: object, rounds: int) -> None:
    assert callable(fn)
    plain: list[float] = []
    jailed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fn(False, folder / "warm-plain")
        fn(True, folder / "warm-jail")
        for n in range(rounds):
            plain.append(fn(False, folder / f"p{n}"))
            jailed.append(fn(True, folder / f"j{n}"))
    p, j = statistics.median(plain), statistics.median(jailed)
    print(
        f"{name}: plain child {p * 1000:.1f} ms, jailed {j * 1000:.1f} ms (median of {rounds}) "
        f"-> the jail adds {(j - p) * 1000:.1f} ms per run, ratio {j / p:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backtest", action="store_true")
    args = parser.parse_args()
    status = jail.probe()
    if not status.available:
        raise SystemExit(f"no jail here: {status.reason}")
    cgroup = jail.PidsCgroup.create(32)
    print(jail.process_cap(jail.JailLimits(), cgroup), f"| python {sys.version.split()[0]}")
    cgroup.remove()
    compare("bare interpreter", once, args.rounds)
    if args.backtest:
        compare("rbi backtest", backtest, max(3, args.rounds // 3))


if __name__ == "__main__":
    main()
