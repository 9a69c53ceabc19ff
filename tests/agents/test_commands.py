"""The agents' CLI commands, run with click's CliRunner on herds of MockModels."""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import click
import pytest
from agent_helpers import answer, mock
from click.testing import CliRunner
from modelherd.agents import commands, copybot, rbi, swarm, trading
from modelherd.agents.commands import parse_interval
from modelherd.errors import ConfigError


class State:
    """Stands in for the `herd` group's CliState: hands out one prepared Herd."""

    def __init__(self, herd: Any) -> None:
        self._herd = herd

    def herd(self) -> Any:
        return self._herd


def invoke(command: click.Command, args: list[str], herd: Any) -> Any:
    return CliRunner(env={"COLUMNS": "250"}).invoke(
        command, args, obj=State(herd), catch_exceptions=False
    )


def test_plugins_add_their_commands() -> None:
    cli = click.Group("herd")
    cli.add_command(click.Group("run"))
    for module in (swarm, trading, rbi, copybot):
        module.register_commands(cli)
    assert "swarm" in cli.commands
    run_group = cli.commands["run"]
    assert isinstance(run_group, click.Group)
    assert sorted(run_group.commands) == ["copybot", "rbi", "swarm", "trading"]


def test_real_herd_cli_lists_the_agent_commands() -> None:
    from modelherd.cli import make_cli

    result = CliRunner().invoke(make_cli(), ["run", "--help"])
    assert result.exit_code == 0, result.output
    for name in ("trading", "rbi", "copybot"):
        assert name in result.output


def test_swarm_command_table_and_json(herd_factory: Any) -> None:
    models = {
        n: mock(n, *[answer(lab)] * 2) for n, lab in (("a", "YES"), ("b", "YES"), ("c", "NO"))
    }
    herd = herd_factory(
        models, {"swarm": {"members": list(models), "samples": 1, "early_stop": False}}
    )
    out = invoke(commands.swarm_command, ["Is it?", "--labels", "YES,NO"], herd).output
    assert "consensus: YES" in out and "agreement 67%" in out and "(votes: YES 2, NO 1)" in out
    assert "3/3 members answered" in out
    assert "model: a, b, c (language-model output, not financial advice)" in out
    data = json.loads(
        invoke(
            commands.swarm_command, ["Is it?", "--labels", "YES,NO", "--json", "--no-save"], herd
        ).output
    )
    assert data["consensus"]["label"] == "YES" and data["path"] is None
    assert [m["status"] for m in data["members"]] == ["ok", "ok", "ok"]


def test_trading_command_once_and_json(herd_factory: Any) -> None:
    herd = herd_factory(
        {"a": mock("a", *[answer("BUY", 0.9, "action")] * 4)},
        {"trading": {"models": ["a"], "samples": 1}},
    )
    out = invoke(commands.trading_command, ["--symbols", "btc,eth", "--once"], herd).output
    assert "BTC" in out and "ETH" in out and "BUY (buy" in out
    assert "portfolio 'paper': equity" in out and "risk: within limits" in out
    assert "journal: " in out and "model: a (" in out
    data = json.loads(invoke(commands.trading_command, ["--symbols", "BTC", "--json"], herd).output)
    assert data["mode"] == "paper" and data["decisions"][0]["symbol"] == "BTC"


def test_trading_command_errors(herd_factory: Any) -> None:
    herd = herd_factory({"a": mock("a")}, {"trading": {"models": ["a"], "samples": 1}})
    result = CliRunner().invoke(
        commands.trading_command, ["--once", "--every", "1m"], obj=State(herd)
    )
    assert result.exit_code == 2 and "pass --once or --every, not both" in result.output
    with pytest.raises(ConfigError, match=r"--every 'soon' is not an interval — use e\.g\. 30s"):
        invoke(commands.trading_command, ["--every", "soon"], herd)
    with pytest.raises(ConfigError, match="live trading needs an execution plugin"):
        invoke(commands.trading_command, ["--live"], herd)
    assert parse_interval("15m") == 900 and parse_interval("1h") == 3600
    assert parse_interval("2.5") == 2.5


def test_every_stops_gracefully_on_ctrl_c(herd_factory: Any) -> None:
    herd = herd_factory(
        {"a": mock("a", *[answer("NOTHING", 0.9, "action")] * 20)},
        {"trading": {"models": ["a"], "samples": 1}},
    )
    timer = threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = CliRunner().invoke(
            commands.trading_command,
            ["--symbols", "BTC", "--every", "0.25s", "--json"],
            obj=State(herd),
            catch_exceptions=False,
        )
    finally:
        timer.cancel()
    assert result.exit_code == 0
    assert "stopping after this round (Ctrl-C again to abort)" in result.output
    rounds = result.output.count('"mode": "paper"')
    assert rounds >= 2
    assert f"stopped after {rounds} round(s); portfolio and journal are saved" in result.output


def test_every_with_rounds_limit(herd_factory: Any) -> None:
    herd = herd_factory(
        {"a": mock("a", *[answer("NOTHING", 0.9, "action")] * 4)},
        {"trading": {"models": ["a"], "samples": 1}},
    )
    out = invoke(
        commands.trading_command, ["--symbols", "ETH", "--every", "0.01s", "--rounds", "2"], herd
    ).output
    assert out.count("paper trading · 1d candles") == 2
    assert "stopped after 2 round(s)" in out


def test_copybot_command(herd_factory: Any) -> None:
    herd = herd_factory(
        {"a": mock("a", *[answer("NOTHING", 0.9, "action")] * 2)}, {"copybot": {"models": ["a"]}}
    )
    out = invoke(commands.copybot_command, [], herd).output
    assert "copybot · following sample-fund · paper" in out
    assert "short positions are not mirrored" in out


def test_rbi_command(herd_factory: Any) -> None:
    from test_rbi import FIXED, SPEC, fenced

    herd = herd_factory({"m": mock("m", SPEC, fenced(FIXED))}, {})
    out = invoke(commands.rbi_command, ["SMA cross idea", "-m", "m", "--rounds", "1"], herd).output
    assert "backtest ok: return " in out and "Sharpe" in out and "trades" in out
    assert "sandbox: bubblewrap jail: " in out
    again = invoke(commands.rbi_command, ["sma cross  IDEA", "-m", "m"], herd).output
    assert "already researched (idea " in again and "--force to run again" in again


def _herd_cli() -> click.Group:
    cli = click.Group("herd")
    cli.add_command(click.Group("run"))
    swarm.register_commands(cli)
    return cli


def test_run_swarm_parses_its_options(herd_factory: Any) -> None:
    """`herd run swarm "Q" -m a` asks "Q" of member a (it used to ask 'Q -m a')."""
    models = {"a": mock("a", answer("YES")), "b": mock("b", answer("NO"))}
    herd = herd_factory(models, {"swarm": {"members": ["b"], "samples": 1}})
    result = CliRunner().invoke(
        _herd_cli(),
        ["run", "swarm", "Is it?", "-m", "a", "--json", "--no-save"],
        obj=State(herd),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["question"] == "Is it?"
    assert [m["alias"] for m in data["members"]] == ["a"] and models["b"].history == []


def test_swarm_exits_1_when_no_member_answered(herd_factory: Any) -> None:
    models = {"a": mock("a", *[RuntimeError("down")] * 3), "b": mock("b", "{")}
    herd = herd_factory(models, {"swarm": {"members": ["a", "b"], "samples": 1}})
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        commands.swarm_command, ["Is it?", "--no-save"], obj=State(herd)
    )
    assert result.exit_code == 1
    assert (
        "error: none of the 2 swarm members gave a usable answer (error, unparsed) — see the "
        "error column, or `herd models --check`" in result.output
    )
    assert "no consensus" in result.output  # the table and the reason still print


def test_swarm_unknown_alias_is_refused_before_running(herd_factory: Any) -> None:
    model = mock("a", answer("YES"))
    herd = herd_factory({"a": model}, {"swarm": {"members": ["a"], "samples": 1}})
    with pytest.raises(ConfigError, match=r"^swarm members: unknown model 'nope'"):
        invoke(commands.swarm_command, ["Is it?", "-m", "nope"], herd)
    with pytest.raises(ConfigError, match=r"^swarm judge: unknown model 'nobody'"):
        invoke(commands.swarm_command, ["Is it?", "-m", "a", "--judge", "nobody"], herd)
    assert model.history == []
