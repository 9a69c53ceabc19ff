"""The `herd` CLI, run as a user runs it (a subprocess), offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERD = [sys.executable, "-m", "modelherd.cli"]


def herd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*HERD, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        input=stdin,
        timeout=120,
    )


@pytest.fixture
def broken_third_party(tmp_path: Path) -> dict[str, str]:
    """A third-party distribution whose plugin raises at import, installed via PYTHONPATH."""
    site = tmp_path / "site"
    dist = site / "herd_broken-1.2.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: herd-broken\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[modelherd]\nbroken = herd_broken\n")
    (site / "herd_broken.py").write_text("raise ImportError('herd_broken needs libfoo')\n")
    return {"PYTHONPATH": str(site)}


def test_version(tmp_path: Path) -> None:
    out = herd("--version", cwd=tmp_path)
    assert out.returncode == 0 and "herd, version" in out.stdout


def test_plugins_json_reports_a_broken_third_party_plugin(
    tmp_path: Path, broken_third_party: dict[str, str]
) -> None:
    out = herd("plugins", "--json", cwd=tmp_path, env=broken_third_party)
    assert out.returncode == 0, out.stderr
    records = {r["name"]: r for r in json.loads(out.stdout)}
    assert records["broken"]["status"] == "failed"
    assert (
        records["broken"]["distribution"] == "herd-broken"
        and records["broken"]["version"] == "1.2.3"
    )
    assert "ImportError: herd_broken needs libfoo" in records["broken"]["error"]
    assert records["llamacpp"]["status"] == "loaded"


def test_broken_plugin_does_not_take_models_down(
    tmp_path: Path, broken_third_party: dict[str, str]
) -> None:
    out = herd("models", "--json", cwd=tmp_path, env=broken_third_party)
    assert out.returncode == 0, out.stderr
    models = {m["alias"]: m for m in json.loads(out.stdout)["models"]}
    assert models["local"]["provider"] == "llamacpp"


def test_strict_makes_the_broken_plugin_fatal(
    tmp_path: Path, broken_third_party: dict[str, str]
) -> None:
    env = {**broken_third_party, "HERD_PLUGINS": "broken,llamacpp"}
    out = herd("--strict", "models", cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("error: plugin 'broken' (herd-broken 1.2.3) failed to load")
    assert "Traceback" not in out.stderr


def test_doctor_names_the_broken_plugin_and_its_fix(
    tmp_path: Path, broken_third_party: dict[str, str]
) -> None:
    out = herd("doctor", "--json", cwd=tmp_path, env=broken_third_party)
    findings = json.loads(out.stdout)
    broken = [f for f in findings if "'broken'" in f["message"]]
    assert broken and broken[0]["level"] == "error"
    assert "[plugins] disable" in broken[0]["fix"]
    assert out.returncode == 1


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text("[herd]\ntimeout = \n")
    assert herd("trust", cwd=tmp_path).returncode == 0
    out = herd("models", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: plugins.toml: invalid TOML")


def test_unknown_model_is_one_line(tmp_path: Path) -> None:
    out = herd("chat", "-m", "gtp", "hi", cwd=tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == (
            "error: unknown model 'gtp' — use an alias from `herd models` or provider/model "
            "(e.g. ollama/llama3.2), or add [models.gtp] to plugins.toml"
        )
        or "did you mean" in out.stderr
    )


def test_bad_option_pair_is_a_usage_error(tmp_path: Path) -> None:
    out = herd("chat", "-o", "temperature", "hi", cwd=tmp_path)
    assert out.returncode == 2 and "'temperature' is not KEY=VALUE" in out.stderr


def test_empty_prompt_is_a_usage_error(tmp_path: Path) -> None:
    out = herd("chat", "   ", cwd=tmp_path)
    assert out.returncode == 2 and "the prompt is empty" in out.stderr


def test_disabled_provider_explains_itself(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text('[plugins]\ndisable = ["llamacpp"]\n')
    out = herd("--config", "plugins.toml", "chat", "hi", cwd=tmp_path)
    assert out.returncode == 2
    assert (
        "provider 'llamacpp' is not available: it is disabled in plugins.toml or HERD_PLUGINS"
        in out.stderr
    )


def test_models_shows_the_active_profile(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text('[profiles.prod]\ndefault_model = "local"\n')
    out = herd("--config", "plugins.toml", "--profile", "prod", "models", "--json", cwd=tmp_path)
    assert json.loads(out.stdout)["profile"] == "prod"


def test_unknown_agent_is_a_usage_error(tmp_path: Path) -> None:
    out = herd("run", "nosuchagent", cwd=tmp_path)
    assert out.returncode == 2 and "no agent named 'nosuchagent'" in out.stderr


def test_a_plugin_registers_cli_commands_and_agents(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "herd_hello-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: herd-hello\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[modelherd]\nhello = herd_hello\n")
    (site / "herd_hello.py").write_text(
        textwrap.dedent(
            """
        import click
        from modelherd import Agent, hookimpl

        class Echo(Agent):
            name = "echo"
            async def run(self, args=(), **kwargs):
                return {"echo": list(args)}

        @hookimpl
        def register_agents(register):
            register(Echo)

        @hookimpl
        def register_commands(cli):
            @click.command("hello")
            def hello():
                click.echo("hello from a plugin")
            cli.add_command(hello)
        """
        )
    )
    env = {"PYTHONPATH": str(site)}
    assert herd("hello", cwd=tmp_path, env=env).stdout.strip() == "hello from a plugin"
    out = herd("run", "echo", "a", "b", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"echo": ["a", "b"]}
