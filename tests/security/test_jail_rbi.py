"""Attacks on what the rbi agent does with model-written code and its results: forged
statistics, garbage results, secrets in errors, and the refusal to run unjailed.
The backtests are real (backtesting.py in the jail, ~2-4 s each)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from modelherd.agents import commands, jail, market_data, rbi, sandbox
from modelherd.agents.jail import Captured, JailStatus
from modelherd.agents.rbi_agent import EXAMPLE_STRATEGY
from modelherd.agents.sandbox import Limits, interpret, run_backtest
from modelherd.errors import ConfigError
from modelherd.testing import MockModel, make_herd
from modelherd.types import ModelSpec

pytest.importorskip("backtesting", reason='the rbi tests need: pip install "modelherd[rbi]"')

SAMPLE = (Path(__file__).resolve().parents[2] / "agents" / "data" / "BTC_1d.csv").read_text()
SPEC = json.dumps({"name": "x", "entry": "a", "exit": "b", "indicators": []})
needs_jail = pytest.mark.skipif(
    not jail.probe().available, reason=f"no jail here: {jail.probe().reason}"
)


def captured(result: bytes, rc: int = 0) -> Captured:
    return Captured(rc, b"", b"", result, 0.1)


def verdict(result: bytes) -> str | None:
    return interpret(captured(result), SAMPLE, Limits(), 1_000_000.0, "note").error


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (b"\xff\xfe", "the backtest's result is not valid UTF-8 — not trusted"),
        (b"{not json", "the backtest's result is not valid JSON — not trusted"),
        (b"[" * 200_000 + b"]" * 200_000, "the backtest's result is not valid JSON — not trusted"),
        (b"[1, 2]", "the backtest's result is not a JSON object — not trusted"),
        (
            b'{"trades": "many"}',
            "the backtest's result was rejected: the backtest returned no list of trades",
        ),
        (
            b'{"trades": [[1, 500, 501, 1, 1, 0]]}',
            "the backtest's result was rejected: trade 1 entry bar 500 is not a bar of the "
            "180 candles",
        ),
        (
            b'{"trades": [[1, 10, 5, 40000, 40000, 0]]}',
            "the backtest's result was rejected: trade 1 exits (bar 5) before it enters (bar 10)",
        ),
        (
            b'{"trades": [[1, 10, 20, NaN, 1, 0]]}',
            "the backtest's result was rejected: trade 1 entry price is not finite (nan)",
        ),
        (
            b'{"trades": [[1, 10, 20, "1", 1, 0]]}',
            "the backtest's result was rejected: trade 1 entry price is not a number (str)",
        ),
        (b"", "the backtest exited without a result (did the code exit early?)"),
    ],
)
def test_unparsable_results_are_failed_rounds(result: bytes, error: str) -> None:
    assert verdict(result) == error


def test_trades_outside_the_candles_or_the_cash_are_rejected() -> None:
    low = min(float(line.split(",")[3]) for line in SAMPLE.splitlines()[1:])
    cheap = json.dumps({"trades": [[10, 10, 20, low / 2, 10**6, 0]]}).encode()
    error = verdict(cheap)
    assert error is not None and error.startswith(
        "the backtest's result was rejected: trade 1 entry price"
    )
    assert "is outside its bar" in error
    rows = SAMPLE.splitlines()[1:]
    entry, exit_ = float(rows[10].split(",")[1]), float(rows[20].split(",")[4])
    leveraged = json.dumps({"trades": [[1000, 10, 20, entry, exit_, 0]]}).encode()
    error = verdict(leveraged)
    assert error is not None and "(no leverage in this backtest)" in error


def test_an_honest_trade_list_gives_herds_numbers() -> None:
    rows = SAMPLE.splitlines()[1:]
    entry, exit_ = float(rows[10].split(",")[1]), float(rows[20].split(",")[4])
    good = json.dumps({"strategy": "S", "trades": [[10, 10, 20, entry, exit_, 0]]}).encode()
    result = interpret(captured(good), SAMPLE, Limits(), 1_000_000.0, "note")
    assert result.ok, result.error
    assert result.stats is not None
    expected = 10 * (exit_ - entry) / 1_000_000.0 * 100
    assert result.stats["return_pct"] == pytest.approx(expected, abs=1e-4)
    assert result.stats["trades"] == 1 and result.stats["bars"] == 180
    assert result.stats["computed_by"].startswith("herd, from the trades")


PATCHED_RETURN = (
    """import backtesting
_run = backtesting.Backtest.run
def run(self, **kwargs):
    stats = _run(self, **kwargs)
    stats["Return [%]"] = 9999.0
    return stats
backtesting.Backtest.run = run
"""
    + EXAMPLE_STRATEGY
)

PATCHED_TRADES = (
    """import backtesting
_run = backtesting.Backtest.run
def run(self, **kwargs):
    stats = _run(self, **kwargs)
    trades = stats["_trades"].copy()
    trades["ExitPrice"] = trades["ExitPrice"] * 100
    stats["_trades"] = trades
    stats["Return [%]"] = 9999.0
    return stats
backtesting.Backtest.run = run
"""
    + EXAMPLE_STRATEGY
)


@needs_jail
@pytest.mark.parametrize(
    ("code", "error"),
    [
        (PATCHED_RETURN, "reported a return of 9999% but its trades give 26.01%"),
        (PATCHED_TRADES, "exit price"),
    ],
)
def test_a_patched_backtest_run_is_not_believed(code: str, error: str, tmp_path: Path) -> None:
    result = run_backtest(code, SAMPLE, tmp_path, Limits(timeout_s=60))
    assert not result.ok
    assert result.error is not None and result.error.startswith(
        "the backtest's result was rejected: "
    )
    assert error in result.error


# ---- the agent and the command ---------------------------------------------------


@pytest.fixture
def herd_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("HERD_DATA_DIR", str(tmp_path / "data"))
    made: list[Any] = []

    def build(*answers: str, settings: dict[str, Any] | None = None) -> tuple[Any, MockModel]:
        model = MockModel(ModelSpec(alias="m", provider="mock", model="mock-m"))
        model.enqueue(*answers)
        rbi_settings = {"research_model": "m", "code_model": "m", "debug_model": "m"}
        herd = make_herd(
            {"m": model},
            config={"agents": {"rbi": {**rbi_settings, **(settings or {})}}},
            plugins=(market_data, rbi),
        )
        made.append(herd)
        return herd, model

    yield build
    for herd in made:
        herd.close()


class State:
    def __init__(self, herd: Any) -> None:
        self._herd = herd

    def herd(self) -> Any:
        return self._herd


def invoke(herd: Any, *args: str) -> Any:
    return CliRunner(env={"COLUMNS": "250"}).invoke(
        commands.rbi_command, list(args), obj=State(herd), catch_exceptions=False
    )


def fenced(code: str) -> str:
    return f"```python\n{code}```"


def test_without_a_jail_model_code_is_refused(
    herd_with: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        jail, "probe", lambda: JailStatus(False, "bwrap (bubblewrap) is not installed")
    )
    herd, model = herd_with(SPEC, fenced(EXAMPLE_STRATEGY))
    with pytest.raises(sandbox.JailUnavailableError) as caught:
        anyio.run(lambda: herd.agent("rbi").run(idea="an idea"))
    assert str(caught.value) == (
        "herd will not run model-written code without a jail: bwrap (bubblewrap) is not "
        f"installed — {jail.FIX}, or pass --unsafe-no-jail to run it with your user's "
        "access to files"
    )
    assert caught.value.exit_code == 2
    assert model.history == []  # refused before any model was asked


def test_unsafe_no_jail_runs_and_says_what_is_lost(
    herd_with: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        jail, "probe", lambda: JailStatus(False, "bwrap (bubblewrap) is not installed")
    )
    herd, _ = herd_with(SPEC, fenced(EXAMPLE_STRATEGY))
    out = invoke(herd, "an idea", "--unsafe-no-jail", "--rounds", "1")
    assert out.exit_code == 0, out.output
    assert "backtest ok" in out.output
    assert "sandbox: NO JAIL (--unsafe-no-jail): the code can read and write your files" in (
        " ".join(out.output.split())
    )


def test_a_config_file_cannot_turn_the_jail_off(herd_with: Any) -> None:
    with pytest.raises(ConfigError, match="unsafe_no_jail"):
        herd, _ = herd_with(SPEC, settings={"unsafe_no_jail": True})
        herd.agent("rbi")


@needs_jail
def test_secrets_never_reach_the_debug_prompt_or_result_json(
    herd_with: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = "sk-proj-" + "A1b2C3d4" * 4
    monkeypatch.setenv("OPENAI_API_KEY", key)
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"ANTHROPIC_API_KEY=sk-ant-{'z9' * 12}\n")
    # unjailed, the code can read the .env; its error carries both secrets
    leaky = (
        f"import os\nraise RuntimeError(open({str(dotenv)!r}).read() + "
        f"'OPENAI_API_KEY=' + {key!r})\n"
    )
    herd, model = herd_with(SPEC, fenced(leaky), fenced(leaky))
    out = invoke(herd, "leaky idea", "--unsafe-no-jail", "--rounds", "1", "--json")
    assert out.exit_code == 1  # no working code: the command fails
    debug_prompt = model.history[-1].messages[-1].content
    assert "RuntimeError" in debug_prompt and "[redacted]" in debug_prompt
    saved = (Path(json.loads(out.output)["folder"]) / "result.json").read_text()
    for text in (debug_prompt, saved, out.output):
        assert key not in text and "sk-ant-" not in text


@needs_jail
def test_a_failed_run_exits_non_zero(herd_with: Any) -> None:
    herd, _ = herd_with(SPEC, "no code at all", "still no code")
    out = invoke(herd, "hopeless idea", "--rounds", "1")
    assert out.exit_code == 1
    assert "failed" in out.output and "the answer contained no Python code" in out.output
