"""RBI: research -> code -> sandboxed run -> debug loop, with scripted models and real
backtesting.py runs in the sandbox (each run is a child process, ~1-2 s)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_helpers import mock
from modelherd.agents.rbi_agent import EXAMPLE_STRATEGY, extract_code, idea_hash
from modelherd.agents.sandbox import Limits, run_backtest
from modelherd.errors import ConfigError, MissingDependencyError

pytest.importorskip("backtesting", reason='the rbi tests need: pip install "modelherd[rbi]"')

SPEC = json.dumps(
    {
        "name": "SMA cross",
        "entry": "fast SMA crosses above slow",
        "exit": "fast crosses below slow",
        "indicators": ["SMA"],
    }
)

# the example the code prompt shows: a strategy that works, so the test also proves the
# prompt's own example runs in the harness
FIXED = EXAMPLE_STRATEGY
# the planted error: `crossover` is used but never imported
BROKEN = FIXED.replace("from backtesting.lib import crossover\n", "")


def fenced(code: str) -> str:
    return f"Here is the strategy:\n```python\n{code}```\nGood luck."


def run_rbi(herd: Any, idea: str, **kwargs: Any) -> Any:
    agent = herd.agent("rbi")
    return anyio.run(lambda: agent.run(idea=idea, **kwargs))


def test_debug_loop_fixes_a_planted_error(herd_factory: Any, _data_dir: Path) -> None:
    research, coder, debugger = mock("r", SPEC), mock("c", fenced(BROKEN)), mock("d", fenced(FIXED))
    herd = herd_factory(
        {"r": research, "c": coder, "d": debugger},
        {"rbi": {"research_model": "r", "code_model": "c", "debug_model": "d", "max_rounds": 2}},
    )
    result = run_rbi(herd, "Buy when the 10-day SMA crosses above the 30-day SMA")
    assert result.status == "ok", result.reason
    assert [(r.step, r.ok) for r in result.rounds] == [("code", False), ("debug", True)]
    assert "NameError: name 'crossover' is not defined" in result.rounds[0].error
    debug_prompt = debugger.history[0].messages[-1].content
    assert "NameError: name 'crossover' is not defined" in debug_prompt and BROKEN in debug_prompt
    assert result.spec["name"] == "SMA cross"
    stats = result.stats
    assert set(stats) >= {"return_pct", "sharpe", "max_drawdown_pct", "trades"}
    assert stats["trades"] >= 1 and stats["bars"] == 180
    folder = Path(result.folder)
    assert folder.is_relative_to(_data_dir)
    assert (folder / "strategy.py").read_text() == FIXED
    assert json.loads((folder / "stats.json").read_text()) == stats
    saved = json.loads((folder / "result.json").read_text())
    assert [r["ok"] for r in saved["rounds"]] == [False, True]

    # the same idea again (different spacing and case) is a duplicate: no model is asked
    again = run_rbi(herd, "buy when the 10-day SMA   crosses above the 30-day sma")
    assert again.status == "duplicate" and again.stats == stats
    assert len(research.history) == 1


def test_gives_up_after_max_rounds_and_says_why(herd_factory: Any) -> None:
    herd = herd_factory(
        {
            "r": mock("r", "no json here"),
            "c": mock("c", "I can't write code."),
            "d": mock("d", *[fenced(BROKEN)] * 2),
        },
        {"rbi": {"research_model": "r", "code_model": "c", "debug_model": "d", "max_rounds": 1}},
    )
    result = run_rbi(herd, "some idea")
    assert result.status == "failed"
    assert result.spec_error == (
        "the research answer was not a spec; the idea text is used as the spec"
    )
    assert result.rounds[0].error == "the answer contained no Python code"
    assert result.reason == (
        "no working code after 2 round(s); last error: NameError: name 'crossover' is not defined"
    )


def test_idea_from_file_and_empty_file(herd_factory: Any, tmp_path: Path) -> None:
    empty = tmp_path / "idea.txt"
    empty.write_text("  \n")
    herd = herd_factory({"m": mock("m")}, {"rbi": {"research_model": "m"}})
    with pytest.raises(ConfigError, match=r"idea.txt is empty — write the strategy idea in it"):
        run_rbi(herd, str(empty))


def test_extract_code_and_hash() -> None:
    assert extract_code("```py\nx = 1\n```") == "x = 1\n"
    assert extract_code("import os\nprint(1)") == "import os\nprint(1)\n"
    assert extract_code("Sorry, I cannot.") == ""
    assert idea_hash("Buy  LOW") == idea_hash("buy low")


SAMPLE = (Path(__file__).resolve().parents[2] / "agents" / "data" / "BTC_1d.csv").read_text()


def test_sandbox_enforces_wall_clock_and_memory(tmp_path: Path) -> None:
    slow = run_backtest(
        "import time\ntime.sleep(30)\n", SAMPLE, tmp_path / "a", Limits(timeout_s=1.5, cpu_s=10)
    )
    assert not slow.ok and slow.timed_out
    assert slow.error == "timed out after 1.5s (wall clock) — the process was killed"
    hog = run_backtest(
        "x = bytearray(8 * 1024**3)\n", SAMPLE, tmp_path / "b", Limits(timeout_s=20, memory_mb=1024)
    )
    assert not hog.ok and hog.error.endswith("MemoryError")


def test_sandbox_blocks_the_network(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        guarded = run_backtest(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n",
            SAMPLE,
            tmp_path / "a",
            Limits(timeout_s=20),
        )
        assert not guarded.ok
        assert guarded.error.endswith("OSError: network access is disabled in the rbi sandbox")
        # below the guard (the raw _socket module): the jail's network namespace has only
        # its own loopback, where nothing listens; the host's server sees no connection
        raw = run_backtest(
            f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
            SAMPLE,
            tmp_path / "b",
            Limits(timeout_s=20),
        )
        assert not raw.ok and "ConnectionRefusedError" in raw.error
        assert raw.isolation.startswith("bubblewrap jail: user, mount, pid, net, ipc")
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_missing_backtesting_says_which_extra(
    herd_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "backtesting" else real(name, *a),
    )
    herd = herd_factory({"m": mock("m")}, {"rbi": {"research_model": "m"}})
    with pytest.raises(
        MissingDependencyError,
        match=r"the rbi agent needs the 'backtesting' "
        r"package — install it with: pip install "
        r'"modelherd\[rbi\]"',
    ):
        run_rbi(herd, "an idea")
