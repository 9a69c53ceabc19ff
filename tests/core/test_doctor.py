"""`herd doctor` and `herd models`: a mistake is a problem with its fix, and the exit
status says so (issue 13). The CLI runs as a subprocess with `--config PATH`; the
"vendor" is a loopback server speaking OpenAI's 401 error format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture
def rejects_keys() -> Iterator[str]:
    """An OpenAI-compatible server that refuses every key (HTTP 401, OpenAI's body)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                }
            ).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_set_key_that_is_rejected_is_a_problem(tmp_path: Path, rejects_keys: str) -> None:
    path = tmp_path / "herd.toml"
    path.write_text(
        f'[models.gpt]\nprovider = "openai"\nmodel = "gpt-x"\nbase_url = "{rejects_keys}"\n'
    )
    out = herd(
        "--config",
        str(path),
        "doctor",
        "--timeout=30",  # a loaded CI box must not turn a 401 into a timeout
        "--json",
        cwd=tmp_path,
        env={"OPENAI_API_KEY": "sk-rejected-0123456789"},
    )
    findings = json.loads(out.stdout)
    gpt = next(f for f in findings if f["area"] == "model gpt")
    assert gpt["level"] == "error"
    assert gpt["message"].startswith("OpenAI refused the API key in OPENAI_API_KEY (HTTP 401")
    assert gpt["fix"] == "check OPENAI_API_KEY in the environment or .env"
    assert "sk-rejected-0123456789" not in out.stdout
    assert out.returncode == 1
    text = herd(
        "--config",
        str(path),
        "doctor",
        "--timeout=30",
        cwd=tmp_path,
        env={"OPENAI_API_KEY": "sk-rejected-01"},
    )
    assert "no problems" not in text.stdout and text.returncode == 1


def test_a_key_that_is_not_set_stays_a_warning(tmp_path: Path, rejects_keys: str) -> None:
    path = tmp_path / "herd.toml"
    path.write_text(
        f'[models.gpt]\nprovider = "openai"\nmodel = "gpt-x"\nbase_url = "{rejects_keys}"\n'
    )
    out = herd("--config", str(path), "doctor", "--timeout=30", "--json", cwd=tmp_path)
    gpt = next(f for f in json.loads(out.stdout) if f["area"] == "model gpt")
    assert gpt == {
        "area": "model gpt",
        "level": "warning",
        "message": "OPENAI_API_KEY is not set",
        "fix": "set OPENAI_API_KEY in the environment or .env",
    }


def test_a_misspelt_provider_gets_the_suggestion_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "herd.toml"
    path.write_text('[models.fast]\nprovider = "olama"\nmodel = "llama3.2"\n')
    message = (
        f"{path}: [models.fast] unknown provider 'olama' — did you mean 'ollama'? "
        "installed providers: "
    )
    doctor = herd("--config", str(path), "doctor", "--timeout=30", "--json", cwd=tmp_path)
    fast = next(f for f in json.loads(doctor.stdout) if f["area"] == "model fast")
    assert fast["level"] == "error" and fast["message"].startswith(message)
    assert doctor.returncode == 1
    models = herd("--config", str(path), "models", cwd=tmp_path)
    assert models.returncode == 2
    assert models.stderr.startswith(f"error: {message}") and "Traceback" not in models.stderr
    assert len(models.stderr.strip().splitlines()) == 1
    assert "fast" in models.stdout  # the table is still shown
    as_json = herd("--config", str(path), "models", "--json", cwd=tmp_path)
    assert as_json.returncode == 2
    rows = {r["alias"]: r for r in json.loads(as_json.stdout)["models"]}
    assert rows["fast"]["reason"].startswith(message)
    chat = herd("--config", str(path), "chat", "-m", "fast", "hi", cwd=tmp_path)
    assert chat.returncode == 2 and chat.stderr.startswith(f"error: {message}")


def test_a_disabled_providers_aliases_are_not_called_typos(tmp_path: Path) -> None:
    path = tmp_path / "herd.toml"
    path.write_text('[plugins]\ndisable = ["openai"]\n')
    out = herd("--config", str(path), "models", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["alias"]: r for r in json.loads(out.stdout)["models"]}
    assert rows["deepseek"]["available"] is False and not rows["deepseek"]["config_error"]
    doctor = herd("--config", str(path), "doctor", "--timeout=30", "--json", cwd=tmp_path)
    gpt = next(f for f in json.loads(doctor.stdout) if f["area"] == "model gpt")
    assert gpt["level"] == "warning"
    assert "disabled in plugins.toml or HERD_PLUGINS" in gpt["message"]
