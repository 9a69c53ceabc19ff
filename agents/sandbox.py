"""Run model-written backtesting.py code in a child process, fenced in.

What is enforced (docs/agents.md repeats this):
- a separate process in a fresh scratch folder, in its own session (the whole group
  is killed on timeout), started with `python -I` (no user site, no PYTHONPATH) and a
  minimal environment (no proxies, no API keys);
- limits through `resource.setrlimit` (set by the child on itself before it imports
  anything else): CPU seconds, address space (memory), size of
  files written, open files; plus a wall-clock timeout;
- no network: when `unshare -rn` works on this host (Linux user namespaces), the child
  runs in an empty network namespace — it has no interface to reach anything. Always,
  the harness also replaces the socket functions with ones that raise. That guard alone
  is Python-level and could be bypassed by hostile code (ctypes); the namespace is the
  real fence. The result names which of the two was in force.
This is a fence against accidents and sloppy code, not a hardened jail.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the harness the child runs: it guards the network, loads the data, runs the strategy
HARNESS = r"""
import json, resource, socket

config = json.load(open("config.json"))
# limits first, before any import the model's code could influence
_MB = 1024 * 1024
for _limit, _value in ((resource.RLIMIT_CPU, (config["cpu_s"], config["cpu_s"] + 1)),
                       (resource.RLIMIT_AS, (config["memory_mb"] * _MB,) * 2),
                       (resource.RLIMIT_FSIZE, (config["file_mb"] * _MB,) * 2),
                       (resource.RLIMIT_NOFILE, (config["open_files"],) * 2),
                       (resource.RLIMIT_CORE, (0, 0))):
    resource.setrlimit(_limit, _value)

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the rbi sandbox")

for _name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
    setattr(socket.socket, _name, _no_network)
socket.create_connection = _no_network
socket.getaddrinfo = _no_network

import pandas as pd
from backtesting import Backtest, Strategy

data = pd.read_csv("data.csv", parse_dates=["time"], index_col="time")
data.columns = [c.capitalize() for c in data.columns]
source = open("strategy.py").read()
namespace = {"__name__": "strategy"}
exec(compile(source, "strategy.py", "exec"), namespace)
found = [v for v in namespace.values()
         if isinstance(v, type) and issubclass(v, Strategy) and v is not Strategy]
if not found:
    raise RuntimeError("strategy.py defines no subclass of backtesting.Strategy — define "
                       "class MyStrategy(Strategy) with init() and next()")
bt = Backtest(data, found[-1], cash=config["cash"], commission=config["commission"],
              finalize_trades=True)
stats = bt.run()

def num(key):
    value = stats.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if value != value else round(value, 4)

out = {"strategy": found[-1].__name__, "return_pct": num("Return [%]"),
       "buy_hold_return_pct": num("Buy & Hold Return [%]"), "sharpe": num("Sharpe Ratio"),
       "max_drawdown_pct": num("Max. Drawdown [%]"), "trades": int(stats["# Trades"]),
       "win_rate_pct": num("Win Rate [%]"), "exposure_pct": num("Exposure Time [%]"),
       "bars": len(data)}
json.dump(out, open("stats.json", "w"))
"""


@dataclass(slots=True)
class Limits:
    timeout_s: float = 60.0
    cpu_s: int = 60
    memory_mb: int = 2048
    file_mb: int = 64
    open_files: int = 256


@dataclass(slots=True)
class RunResult:
    ok: bool
    stats: dict[str, Any] | None
    error: str | None
    returncode: int | None
    duration_s: float
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    isolation: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@functools.cache
def network_namespace_available() -> bool:
    """True when `unshare -rn` can start a process here (probed once)."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def isolation_note(namespace: bool) -> str:
    if namespace:
        return "network: empty namespace (unshare -rn) + socket guard; rlimits: cpu, memory, files"
    return (
        "network: Python socket guard only (no user namespaces here — not a hard "
        "boundary); rlimits: cpu, memory, files"
    )


def _tail(text: str, chars: int = 4000) -> str:
    return text if len(text) <= chars else "…" + text[-chars:]


def run_backtest(
    code: str,
    data_csv: str,
    workdir: Path,
    limits: Limits,
    *,
    cash: float = 1_000_000.0,
    commission: float = 0.001,
    isolate_network: bool = True,
) -> RunResult:
    """Write the code, data and harness into `workdir` and run them under the limits.

    Blocking: call it from a worker thread (`anyio.to_thread.run_sync`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "strategy.py").write_text(code, encoding="utf-8")
    (workdir / "data.csv").write_text(data_csv, encoding="utf-8")
    (workdir / "harness.py").write_text(HARNESS, encoding="utf-8")
    # the harness applies the rlimits to itself first thing (no preexec_fn: this runs in
    # a worker thread, and preexec_fn is unsafe in a threaded parent)
    config = {
        "cash": cash,
        "commission": commission,
        "cpu_s": limits.cpu_s,
        "memory_mb": limits.memory_mb,
        "file_mb": limits.file_mb,
        "open_files": limits.open_files,
    }
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "stats.json").unlink(missing_ok=True)
    namespace = isolate_network and network_namespace_available()
    argv = [sys.executable, "-I", "-B", "harness.py"]
    if namespace:
        argv = [shutil.which("unshare") or "unshare", "-rn", *argv]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    duration = time.perf_counter() - started
    note = isolation_note(namespace)
    stats_file = workdir / "stats.json"
    if not timed_out and proc.returncode == 0 and stats_file.is_file():
        return RunResult(
            True,
            json.loads(stats_file.read_text()),
            None,
            0,
            duration,
            stdout=_tail(stdout),
            stderr=_tail(stderr),
            isolation=note,
        )
    if timed_out:
        error = f"timed out after {limits.timeout_s:g}s (wall clock) — the process was killed"
    elif proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        error = f"killed by the CPU limit ({limits.cpu_s}s)\n{_tail(stderr, 1500)}"
    else:
        error = _tail(stderr.strip()) or f"exited with code {proc.returncode} and no output"
    return RunResult(
        False, None, error, proc.returncode, duration, timed_out, _tail(stdout), _tail(stderr), note
    )
