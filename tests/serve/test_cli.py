"""`herd keys create / list / revoke` and `herd serve`'s config errors (one line, exit 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from modelherd.cli import make_cli

pytestmark = pytest.mark.timeout(60)


def cfg(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "plugins.toml"
    keys = tmp_path / "keys.json"
    path.write_text(
        f"""
[models.m]
provider = "openai_compatible"
base_url = "http://127.0.0.1:9/v1"
model = "x"

[plugins.serve]
keys_path = "{keys}"
{extra}
"""
    )
    return path


def herd(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(make_cli(), ["--config", str(config), *args])
    return result.exit_code, result.stdout, result.stderr


def test_create_list_revoke(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    code, out, err = herd(
        config, "keys", "create", "--tenant", "alice", "--models", "m", "--expires", "30d"
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("hk_") and len(token) == 3 + 12 + 1 + 43
    assert "this is the only time the key is shown" in err
    assert "not limited" in err  # no [tenants.*]: said, not silent
    keys_file = tmp_path / "keys.json"
    assert os.stat(keys_file).st_mode & 0o777 == 0o600
    assert token not in keys_file.read_text()
    code, out, _ = herd(config, "keys", "list", "--json")
    rows = json.loads(out)
    assert [(r["tenant"], r["models"], r["state"]) for r in rows] == [("alice", ["m"], "active")]
    assert "sha256" not in out and token not in out
    code, out, _ = herd(config, "keys", "revoke", rows[0]["id"])
    assert code == 0 and f"revoked key {rows[0]['id']}" in out
    code, out, _ = herd(config, "keys", "list")
    assert "revoked" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--models", "m"), "--tenant is required — e.g. herd keys create --tenant alice"),
        (("--tenant", "a", "--models", "nope"), "unknown model 'nope'"),
        (("--tenant", "a", "--expires", "soonish"), "--expires 'soonish' is neither a duration"),
        (("--tenant", "a", "--expires", "2001-01-01"), "--expires '2001-01-01' is in the past"),
        (("--tenant", "a b"), "tenant 'a b' must be letters, digits"),
    ],
)
def test_create_errors_are_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, _, err = herd(cfg(tmp_path), "keys", "create", *args)
    assert code == 2
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_a_tenant_missing_from_the_config_is_refused(tmp_path: Path) -> None:
    config = cfg(tmp_path, '[tenants.alice]\ntier = "basic"\n')
    code, _, err = herd(config, "keys", "create", "--tenant", "mallory")
    assert code == 2
    assert "[tenants.mallory] does not exist" in err and 'tier = "basic" first' in err
    code, _, err = herd(config, "keys", "create", "--tenant", "alice")
    assert code == 0 and "not limited" not in err


def test_revoke_unknown_and_a_keys_file_others_can_read(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    code, _, err = herd(config, "keys", "revoke", "abcdef123456")
    assert code == 1 and "no key with id 'abcdef123456'" in err
    assert herd(config, "keys", "create", "--tenant", "alice")[0] == 0
    os.chmod(tmp_path / "keys.json", 0o644)
    code, _, err = herd(config, "keys", "list")
    assert code == 2
    assert "readable by other users (mode 644) — run: chmod 600" in err


@pytest.mark.parametrize(
    ("table", "options", "message"),
    [
        ("port = 70000", (), "[plugins.serve] port"),
        ('redis_url = "redis://:hunter2@127.0.0.1/0"', (), "holds a password"),
        ("", ("--certfile", "/nonexistent.pem"), "certfile and keyfile go together"),
        ("", ("--certfile", "/no/c.pem", "--keyfile", "/no/k.pem"), "cannot load /no/c.pem"),
        ("", ("--workers", "2", "--port", "0"), "--workers needs a fixed --port"),
    ],
)
def test_serve_config_errors(
    tmp_path: Path, table: str, options: tuple[str, ...], message: str
) -> None:
    code, _, err = herd(cfg(tmp_path, table), "serve", *options)
    assert code == 2, err
    assert message in err and err.startswith("error: ")
    assert "hunter2" not in err
