"""Run model-written backtesting.py code in the bubblewrap jail (agents/jail.py).

The round trip:
1. the parent writes the harness, the code, the candles and the limits into a job
   folder, mounted read-only at /job in the jail;
2. the harness (below) sets the rlimits it can only set from inside, imports
   backtesting, runs the strategy and writes its trades to a pipe;
3. the parent reads stdout, stderr and that pipe with byte caps, and recomputes every
   statistic from the trades and its own copy of the candles (agents/rbi_stats.py).
Anything that does not parse — invalid UTF-8, garbage JSON, a forged return — is a
failed round with a one-line reason, never a crash.

Without a jail (no bwrap, no user namespaces) nothing runs unless the caller asks for
`jailed=False` (`herd run rbi --unsafe-no-jail`): then the harness runs as a plain
child process with rlimits, an empty network namespace where `unshare -rn` works, and
nothing else between the code and the user's files.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelherd.errors import HerdError

from . import jail, rbi_stats
from .jail import JailLimits

#: the limits of one run (the jail's; the name the agent and tests use)
Limits = JailLimits

#: the harness the child runs: limits, network guard, data, strategy, trades out
HARNESS = r"""
import json, os, resource, socket, sys

job, result_fd = sys.argv[1], int(sys.argv[2])
config = json.load(open(os.path.join(job, "config.json")))
# limits first, before any import the model's code could influence (prlimit already
# set most of them in the jail; RLIMIT_NPROC only counts the jail's processes when it
# is set from inside the user namespace)
_MB = 1024 * 1024
_limits = [(resource.RLIMIT_CPU, (config["cpu_s"], config["cpu_s"] + 1)),
           (resource.RLIMIT_AS, (config["memory_mb"] * _MB,) * 2),
           (resource.RLIMIT_FSIZE, (config["file_mb"] * _MB,) * 2),
           (resource.RLIMIT_NOFILE, (config["open_files"],) * 2),
           (resource.RLIMIT_CORE, (0, 0))]
if config["processes"]:
    _limits.append((resource.RLIMIT_NPROC, (config["processes"],) * 2))
for _limit, _value in _limits:
    resource.setrlimit(_limit, _value)
sys.path.extend(config["site_paths"])

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the rbi sandbox")

for _name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
    setattr(socket.socket, _name, _no_network)
socket.create_connection = _no_network
socket.getaddrinfo = _no_network

import pandas as pd
from backtesting import Backtest, Strategy

data = pd.read_csv(os.path.join(job, "data.csv"), parse_dates=["time"], index_col="time")
data.columns = [c.capitalize() for c in data.columns]
source = open(os.path.join(job, "strategy.py")).read()
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
trades = [[float(t.Size), int(t.EntryBar), int(t.ExitBar), float(t.EntryPrice),
           float(t.ExitPrice), float(t.Commission)] for t in stats["_trades"].itertuples()]
reported = stats.get("Return [%]")
out = {"strategy": found[-1].__name__, "trades": trades,
       "reported_return_pct": None if reported is None else float(reported)}
payload = json.dumps(out).encode()
with os.fdopen(result_fd, "wb") as pipe:
    pipe.write(payload)
"""


class JailUnavailableError(HerdError):
    """No jail can be built here and the caller did not accept running without one."""

    exit_code = 2


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


def refusal(reason: str) -> str:
    return (
        f"herd will not run model-written code without a jail: {reason} — {jail.FIX}, "
        f"or pass --unsafe-no-jail to run it with your user's access to files"
    )


@functools.cache
def network_namespace_available() -> bool:
    """True when `unshare -rn` can start a process here (probed once; unjailed runs)."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def isolation_note(jailed: bool, limits: Limits | None = None, cap: str = "") -> str:
    limits = limits or Limits()
    if jailed:
        return (
            "bubblewrap jail: user, mount, pid, net, ipc namespaces; read-only "
            f"interpreter; writable only /scratch ({limits.scratch_mb} MB tmpfs); no "
            f"secrets in its environment; rlimits cpu {limits.cpu_s}s, memory "
            f"{limits.memory_mb} MB, files {limits.file_mb} MB" + (f"; {cap}" if cap else "")
        )
    net = (
        "empty network namespace (unshare -rn)"
        if network_namespace_available()
        else "Python socket guard only"
    )
    return (
        "NO JAIL (--unsafe-no-jail): the code can read and write your files; network: "
        f"{net}; rlimits cpu, memory, files"
    )


def _tail(text: str, chars: int = 4000) -> str:
    return text if len(text) <= chars else "…" + text[-chars:]


def _candles(data_csv: str) -> list[dict[str, Any]]:
    return list(csv.DictReader(io.StringIO(data_csv)))


def _bars_per_year(candles: list[dict[str, Any]]) -> float:
    """From the median spacing of the candles' timestamps; 365 when unknown."""
    from datetime import datetime

    try:
        times = [datetime.fromisoformat(str(c["time"]).replace("Z", "+00:00")) for c in candles]
    except (KeyError, ValueError):
        return 365.0
    gaps = sorted((b - a).total_seconds() for a, b in itertools.pairwise(times))
    gap = gaps[len(gaps) // 2] if gaps else 0.0
    return 365.0 * 86400.0 / gap if gap > 0 else 365.0


def run_backtest(
    code: str,
    data_csv: str,
    workdir: Path,
    limits: Limits,
    *,
    cash: float = 1_000_000.0,
    commission: float = 0.001,
    jailed: bool = True,
) -> RunResult:
    """Run `code` on the candles in `data_csv` under `limits`; stats come from herd.

    `jailed=False` runs without the jail (say so to the user). Blocking: call it from a
    worker thread (`anyio.to_thread.run_sync`).
    """
    if jailed:
        status = jail.probe()
        if not status.available:
            raise JailUnavailableError(refusal(status.reason))
    config = {
        "cash": cash,
        "commission": commission,
        "cpu_s": limits.cpu_s,
        "memory_mb": limits.memory_mb,
        "file_mb": limits.file_mb,
        "open_files": limits.open_files,
        # unjailed, RLIMIT_NPROC would count every process of the user
        "processes": limits.processes if jailed else 0,
        "site_paths": jail.site_paths(),
    }
    files = {
        "strategy.py": code,
        "data.csv": data_csv,
        "harness.py": HARNESS,
        "config.json": json.dumps(config),
    }
    unshare = shutil.which("unshare") if not jailed and network_namespace_available() else None
    run = jail.run_python(
        files,
        "harness.py",
        workdir,
        limits,
        jailed=jailed,
        unjailed_prefix=[unshare, "-rn"] if unshare else [],
    )
    captured = run.captured
    note = isolation_note(jailed, limits, run.process_cap)
    return interpret(captured, data_csv, limits, cash, note)


def interpret(
    captured: jail.Captured, data_csv: str, limits: Limits, cash: float, note: str
) -> RunResult:
    """The RunResult of a finished child: recomputed stats, or why the round failed."""
    stdout = captured.stdout.decode("utf-8", "replace")
    stderr = captured.stderr.decode("utf-8", "replace")
    rc = captured.returncode

    def failed(error: str) -> RunResult:
        return RunResult(
            False,
            None,
            error,
            rc,
            captured.duration_s,
            captured.timed_out,
            _tail(stdout),
            _tail(stderr),
            note,
        )

    if captured.timed_out:
        return failed(
            f"timed out after {limits.timeout_s:g}s (wall clock) — the process was killed"
        )
    if captured.overflow:
        return failed(
            f"wrote more than {limits.output_bytes // 1024} KB to its {captured.overflow} — "
            "the process was killed"
        )
    killed = {-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL}
    if rc in killed:
        return failed(f"killed by the CPU limit ({limits.cpu_s}s)\n{_tail(stderr, 1500)}")
    if rc != 0:
        return failed(_tail(stderr.strip()) or f"exited with code {rc} and no output")
    if not captured.result:
        return failed("the backtest exited without a result (did the code exit early?)")
    try:
        text = captured.result.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        return failed("the backtest's result is not valid UTF-8 — not trusted")
    except (ValueError, RecursionError):
        return failed("the backtest's result is not valid JSON — not trusted")
    if not isinstance(data, dict):
        return failed("the backtest's result is not a JSON object — not trusted")
    candles = _candles(data_csv)
    try:
        stats = rbi_stats.compute(
            data.get("trades"),
            candles,
            cash,
            _bars_per_year(candles),
            data.get("reported_return_pct"),
        )
    except rbi_stats.StatsError as exc:
        return failed(f"the backtest's result was rejected: {exc}")
    except (KeyError, ValueError, TypeError) as exc:
        return failed(f"the candles could not be read back ({exc})")
    name = data.get("strategy")
    stats = {"strategy": name[:80] if isinstance(name, str) else "?", **stats}
    return RunResult(
        True,
        stats,
        None,
        0,
        captured.duration_s,
        stdout=_tail(stdout),
        stderr=_tail(stderr),
        isolation=note,
    )
