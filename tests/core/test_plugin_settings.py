"""No silent misconfiguration (issue 13): a bad plugin table, a misspelt plugin name or
a plugin hook that raises is one clear line — never a plugin quietly switched off.

The CLI runs as a subprocess with `--config PATH` (explicit, so trusted) in tmp dirs;
third-party plugins are real distributions put on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from modelherd import ConfigError, Herd, hookimpl
from modelherd.config import load_config
from modelherd.errors import PluginLoadError
from modelherd.testing import MockModel, make_herd
from pydantic import BaseModel, ConfigDict

HERD = [sys.executable, "-m", "modelherd.cli"]


def herd(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HERD, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "herd.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def site_with(tmp_path: Path, dist: str, module: str, code: str) -> dict[str, str]:
    """A third-party distribution `dist` whose entry point `module` is `code`."""
    site = tmp_path / "site"
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[modelherd]\n{module.removeprefix('herd_')} = {module}\n"
    )
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    return {"PYTHONPATH": str(site)}


# ---- a typo in a built-in plugin's table: exit 2 on every command ---------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[plugins.cache_memory]\ntll = 5\n",
            "[plugins.cache_memory] tll: unknown key — did you mean 'ttl'? (see docs/cache.md)",
        ),
        (
            "[plugins.alerts]\nlatency_mean = 5\n",
            "[plugins.alerts] latency_mean: unknown key — did you mean 'latency_mean_s'? "
            "(see docs/observability.md)",
        ),
        (
            '[plugins.otel]\nendpont = "http://127.0.0.1:4318"\n',
            "[plugins.otel] endpont: unknown key — did you mean 'endpoint'? "
            "(see docs/observability.md)",
        ),
        (
            '[plugins.cache_memory]\nmax_bytes = "lots"\n',
            "[plugins.cache_memory] max_bytes: Value error, 'lots' is not a size — write e.g. "
            "512MB, 2GiB or 1048576 — fix that value (see docs/cache.md)",
        ),
        (
            '[plugins.cache_disk]\nmax_bytes = "lots"\n',
            "[plugins.cache_disk] max_bytes: Value error, 'lots' is not a size — write e.g. "
            "512MB, 2GiB or 1048576 — fix that value (see docs/cache.md)",
        ),
        (
            '[plugins]\ndisable = "otel"\n',
            '[plugins] disable must be a list of plugin names — write disable = ["otel"] '
            "(see `herd plugins` for the names)",
        ),
        (
            '[plugins]\ndisable = ["otell"]\n',
            "[plugins] disable names 'otell', which is not an installed plugin — "
            "did you mean 'otel'? (see `herd plugins`)",
        ),
        (
            "[plugins.cache_memroy]\nttl = 5\n",
            "[plugins.cache_memroy] is not an installed plugin's table — did you mean "
            "'cache_memory'? (install that plugin, fix the name, or remove the table; "
            "`herd plugins` lists them)",
        ),
        (
            "[plugins]\notel = true\n",
            "[plugins] otel must be a table — write [plugins.otel] with its settings below it "
            "(see docs/configuration.md)",
        ),
    ],
)
def test_a_bad_plugin_table_is_one_line_and_exit_2(tmp_path: Path, toml: str, message: str) -> None:
    path = config(tmp_path, toml)
    out = herd("--config", path, "models", cwd=tmp_path)
    assert one_error_line(out) == f"error: {path}: {message}"


def test_every_command_refuses_the_bad_table(tmp_path: Path) -> None:
    path = config(tmp_path, "[plugins.cache_memory]\ntll = 5\n")
    expected = (
        f"error: {path}: [plugins.cache_memory] tll: unknown key — did you mean 'ttl'? "
        "(see docs/cache.md)"
    )
    for args in (["plugins"], ["chat", "hi"], ["run", "swarm", "q"], ["cache", "stats"]):
        out = herd("--config", path, *args, cwd=tmp_path)
        assert one_error_line(out) == expected, args
    doctor = herd("--config", path, "doctor", "--json", cwd=tmp_path)
    assert doctor.returncode == 2
    findings = json.loads(doctor.stdout)
    assert findings[0] == {
        "area": "config",
        "level": "error",
        "message": expected.removeprefix("error: "),
        "fix": "",
    }


def test_a_disabled_plugins_table_is_not_checked(tmp_path: Path) -> None:
    # blocked before import: its schema is unknown and its settings do nothing anyway
    path = config(
        tmp_path, '[plugins]\ndisable = ["cache_memory"]\n[plugins.cache_memory]\ntll = 5\n'
    )
    out = herd("--config", path, "plugins", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = {r["name"]: r for r in json.loads(out.stdout)}
    assert records["cache_memory"]["status"] == "disabled"


def test_herd_plugins_names_get_did_you_mean(tmp_path: Path) -> None:
    out = herd("models", cwd=tmp_path, env={"HERD_PLUGINS": "llamacpp,otell"})
    assert one_error_line(out) == (
        "error: HERD_PLUGINS names 'otell', which is not an installed plugin — "
        "did you mean 'otel'? (see `herd plugins`)"
    )
    path = config(tmp_path, '[herd]\nallow_plugins = ["llamacpp", "olama"]\n')
    out = herd("--config", path, "models", cwd=tmp_path)
    assert one_error_line(out) == (
        f"error: {path}: [herd] allow_plugins names 'olama', which is not an installed "
        "plugin — did you mean 'ollama'? (see `herd plugins`)"
    )


# ---- a third-party plugin's own table ------------------------------------------------

REDACT = """
from modelherd import hookimpl
from pydantic import BaseModel, ConfigDict


class RedactSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = ""


@hookimpl
def register_settings(register):
    register("redact", RedactSettings, "docs/redact.md")
"""


def test_a_third_party_table_typo_is_one_line(tmp_path: Path) -> None:
    site = site_with(tmp_path, "herd-redact", "herd_redact", REDACT)
    path = config(tmp_path, '[plugins.redact]\npatern = "[a-z]+@[a-z.]+"\n')
    for args in (["models"], ["chat", "my e-mail is a@b.c"]):
        out = herd("--config", path, *args, cwd=tmp_path, env=site)
        assert one_error_line(out) == (
            f"error: {path}: [plugins.redact] patern: unknown key — did you mean 'pattern'? "
            "(see docs/redact.md)"
        )
    path = config(tmp_path, '[plugins.redcat]\npattern = "x"\n')
    out = herd("--config", path, "models", cwd=tmp_path, env=site)
    assert "did you mean 'redact'?" in one_error_line(out)
    good = config(tmp_path, '[plugins.redact]\npattern = "x"\n')
    assert herd("--config", good, "models", "--json", cwd=tmp_path, env=site).returncode == 0


class DemoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = 1


class DemoPlugin:
    __name__ = "demo"

    @hookimpl
    def register_settings(self, register: Callable[..., None]) -> None:
        register("demo", DemoSettings, "docs/demo.md")


def test_register_settings_in_process(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[plugins.demo]\nlevle = 2\n")
    herd = Herd(load_config(path), env={}, plugins=[DemoPlugin()])
    with pytest.raises(ConfigError) as info:
        herd.pm  # noqa: B018
    assert info.value.message == (
        f"{path}: [plugins.demo] levle: unknown key — did you mean 'level'? (see docs/demo.md)"
    )
    with pytest.raises(ConfigError):  # reported again on the next use, not half-loaded
        herd.pm  # noqa: B018


# ---- plugin hooks that raise ---------------------------------------------------------

FLAKY = """
import os

from modelherd import Model, hookimpl
from modelherd.types import ChatResponse


class Echo(Model):
    provider = "echo"

    async def chat(self, request):
        return ChatResponse(content="echo", model=request.model, provider="echo")


@hookimpl
def register_providers(register):
    register(Echo)


@hookimpl
def startup(herd):
    if os.environ.get("FLAKY") == "startup":
        raise RuntimeError("flaky startup")


@hookimpl
def after_call(request, response, herd):
    if os.environ.get("FLAKY") == "after_call":
        raise RuntimeError("flaky after_call")
"""


@pytest.fixture
def flaky(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    site = site_with(tmp_path, "herd-flaky", "herd_flaky", FLAKY)
    return lambda where: {**site, "FLAKY": where}


def test_a_startup_hook_that_raises_is_shown_by_plugins_and_doctor(
    tmp_path: Path, flaky: Callable[[str], dict[str, str]]
) -> None:
    env = flaky("startup")
    out = herd("plugins", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    record = {r["name"]: r for r in json.loads(out.stdout)}["flaky"]
    assert record["status"] == "failed"
    assert record["error"] == "startup raised RuntimeError: flaky startup"
    doctor = herd("doctor", "--json", cwd=tmp_path, env=env)
    found = [f for f in json.loads(doctor.stdout) if "'flaky'" in f["message"]]
    assert found == [
        {
            "area": "plugins",
            "level": "error",
            "message": "'flaky' (herd-flaky 1.0) failed: startup raised RuntimeError: flaky startup",
            "fix": 'fix or uninstall it, or add "flaky" to [plugins] disable in plugins.toml '
            "(--strict makes this fatal)",
        }
    ]
    assert doctor.returncode == 1
    # a call still works, and says once what broke
    chat = herd("chat", "--no-stream", "-m", "echo/x", "hi", cwd=tmp_path, env=env)
    assert chat.returncode == 0 and chat.stdout == "echo\n"
    assert chat.stderr.strip() == (
        "warning: plugin 'flaky' failed: startup raised RuntimeError: flaky startup — fix or "
        "disable it (`herd plugins` shows it; --strict makes it fatal)"
    )
    strict = herd("--strict", "plugins", cwd=tmp_path, env=env)
    assert one_error_line(strict) == (
        "error: plugin 'flaky' failed in startup: RuntimeError: flaky startup — fix or disable it"
    )


def test_an_after_call_hook_that_raises_is_no_traceback(
    tmp_path: Path, flaky: Callable[[str], dict[str, str]]
) -> None:
    env = flaky("after_call")
    out = herd("chat", "--no-stream", "-m", "echo/x", "hi", cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout == "echo\n"
    assert out.stderr.strip() == (
        "warning: plugin 'flaky' failed: after_call raised RuntimeError: flaky after_call — "
        "fix or disable it (`herd plugins` shows it; --strict makes it fatal)"
    )
    streamed = herd("chat", "-m", "echo/x", "hi", cwd=tmp_path, env=env)
    assert streamed.returncode == 0 and "Traceback" not in streamed.stderr
    strict = herd("--strict", "chat", "--no-stream", "-m", "echo/x", "hi", cwd=tmp_path, env=env)
    assert one_error_line(strict) == (
        "error: plugin 'flaky' failed in after_call: RuntimeError: flaky after_call — "
        "fix or disable it"
    )


class Broken:
    __name__ = "broken-after"

    @hookimpl
    def after_call(self, request: Any, response: Any, herd: Any) -> None:
        raise RuntimeError("boom")


class Counting:
    __name__ = "counting"

    def __init__(self) -> None:
        self.seen = 0

    @hookimpl
    def after_call(self, request: Any, response: Any, herd: Any) -> None:
        self.seen += 1


def test_one_broken_after_call_does_not_stop_the_others() -> None:
    counting = Counting()
    model = MockModel()
    herd = make_herd({"mock": model}, plugins=(counting, Broken()))
    model.enqueue("ok")
    assert herd.chat_sync("mock", "q").content == "ok"
    herd.close()
    assert counting.seen == 1
    record = next(r for r in herd.plugin_records if r.name == "broken-after")
    assert record.failed_hooks == {"after_call": "after_call raised RuntimeError: boom"}
    strict = make_herd({"mock": model}, plugins=(Broken(),))
    strict.strict = True
    model.enqueue("ok")
    with pytest.raises(PluginLoadError, match="plugin 'broken-after' failed in after_call"):
        strict.chat_sync("mock", "q")
    strict.close()
