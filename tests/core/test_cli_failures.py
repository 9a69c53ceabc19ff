"""The CLI cases of issue 13, run through `herd`'s own entry point (main) against the
loopback vendors: each mistake's message and exit status."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from modelherd.cli import main

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/ as a root: the loopback vendors

from providers import fake_anthropic, fake_ollama, fake_openai
from providers.loopback import LoopbackServer, free_port


@pytest.fixture(scope="module")
def servers() -> Any:
    made = {
        "openai": LoopbackServer(fake_openai.make_app).start(),
        "anthropic": LoopbackServer(fake_anthropic.make_app).start(),
        "ollama": LoopbackServer(fake_ollama.make_app).start(),
    }
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture
def config(servers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "herd.toml"
    path.write_text(
        f"""
[herd]
default_model = "gpt"
retries = 0

[models.gpt]
provider = "openai"
model = "echo-model"
base_url = "{servers["openai"].url}/v1"

[models.claude]
provider = "anthropic"
model = "echo-claude"
base_url = "{servers["anthropic"].url}"

[models.down]
provider = "openai"
model = "echo-model"
base_url = "http://127.0.0.1:{free_port()}/v1"

[models.llama]
provider = "ollama"
model = "llama3.2"
host = "{servers["ollama"].url}"
"""
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", fake_openai.API_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake_anthropic.API_KEY)
    monkeypatch.setenv("HERD_DATA_DIR", str(tmp_path / "data"))
    return str(path)


def run(
    config: str, args: list[str], capsys: Any, stdin: str | None = None
) -> tuple[int, str, str]:
    read, write = os.pipe()  # a real pipe, as a shell makes one (empty: nothing piped)
    os.write(write, (stdin or "").encode())
    os.close(write)
    sys.stdin = os.fdopen(read)
    code = 0
    try:
        main(["--config", config, *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.stdin.close()
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def test_piped_text_and_the_prompt_are_both_sent(config, capsys):
    code, out, err = run(config, ["chat", "--no-stream", "summarize this"], capsys, "DATA 1 2 3\n")
    assert code == 0, err
    assert out.strip() == "echo: DATA 1 2 3\n\nsummarize this"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "-5"], "option max_tokens=-5 is not valid for the openai provider"),
        (["-o", "temperature=1e9"], "option temperature=1000000000.0 is not valid for the openai"),
        (["-o", "foo=bar"], "option 'foo' is not valid for the openai provider — allowed:"),
        (
            ["-m", "claude", "--temperature", "5"],
            "option temperature=5.0 is not valid for the "
            "anthropic provider (input should be less than or equal to 1)",
        ),
    ],
)
def test_bad_options_are_one_line_exit_2(config, capsys, args, message):
    code, out, err = run(config, ["chat", *args, "hi"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_schema_flag_returns_the_parsed_object(config, capsys):
    schema = '{"type": "object", "properties": {"action": {"enum": ["BUY", "SELL"]}}}'
    code, out, err = run(config, ["chat", "--schema", schema, "decide"], capsys)
    assert code == 0, err
    assert json.loads(out) == {"action": "BUY"}
    code, _, err = run(config, ["chat", "--schema", "nope.json", "decide"], capsys)
    assert code == 2 and err.startswith("error: --schema 'nope.json' is neither inline JSON")


def test_swarm_unknown_alias_exit_2_before_running(config, capsys):
    code, _, err = run(config, ["swarm", "-m", "nope", "Q?"], capsys)
    assert code == 2 and err.startswith("error: swarm members: unknown model 'nope' — ")
    code, _out, err = run(config, ["swarm", "-m", "gpt", "--judge", "nobody", "Q?"], capsys)
    assert code == 2 and err.startswith("error: swarm judge: unknown model 'nobody' — ")
    assert "[models.nobody]" in err


def test_run_swarm_parses_its_options(config, capsys):
    code, out, err = run(config, ["run", "swarm", "Q?", "-m", "gpt", "-n", "1", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["question"] == "Q?" and [m["alias"] for m in data["members"]] == ["gpt"]


def test_swarm_where_nobody_answered_exits_1(config, capsys):
    code, out, err = run(config, ["swarm", "-m", "down", "-n", "2", "--no-save", "Q?"], capsys)
    assert code == 1
    assert "error: none of the 2 swarm members gave a usable answer (error)" in err
    assert "ConnectionRefusedBy" in out  # the member table says why, per member


def test_ollama_unload_404_for_a_listed_model(config, servers, capsys):
    host = servers["ollama"].url
    code, _, err = run(config, ["ollama", "unload", "ghost", "--host", host], capsys)
    assert code == 1
    assert f"error: Ollama at {host} lists 'ghost:latest' as pulled but answered 404" in err
    assert "has no model" not in err


def test_models_table_keeps_the_variable_name_whole_at_80_columns(config, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    code, out, _ = run(config, ["models"], capsys)
    assert code == 0
    assert "ANTHROPIC_API_KEY" in out and "ANTHROPIC_API_…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
