"""The ollama provider through the official ollama client, on a loopback Ollama server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from modelherd import (
    BadRequestError,
    BadResponseError,
    CallTimeoutError,
    ChatResponse,
    ConnectionFailedError,
    Herd,
    Metric,
    ModelNotFoundError,
    ModelSpec,
    ProviderError,
    hookimpl,
)
from modelherd.cli import main
from modelherd.plugins.providers import ollama as ollama_provider
from modelherd.plugins.providers.ollama import OllamaModel, normalize_host, normalize_name

from .conftest import provider_herd
from .loopback import LoopbackServer, free_port


def make(
    server: LoopbackServer | str,
    herds: list[Herd],
    model: str = "llama3.2",
    env: dict[str, str] | None = None,
    **settings: Any,
) -> Herd:
    host = server if isinstance(server, str) else server.url
    table: dict[str, Any] = {"provider": "ollama", "model": model, "host": host, **settings}
    if host == "":
        del table["host"]
    herd = provider_herd(ollama_provider, {"o": table}, env or {})
    herds.append(herd)
    return herd


async def _closing(herd: Herd, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await herd.aclose()


def stream_all(herd: Herd, prompt: str = "hi", **kwargs: Any) -> tuple[list[str], ChatResponse]:
    async def go() -> tuple[list[str], ChatResponse]:
        chunks: list[str] = []
        final = None
        async for item in herd.stream("o", prompt, **kwargs):
            if isinstance(item, str):
                chunks.append(item)
            else:
                final = item
        assert final is not None
        return chunks, final

    return asyncio.run(_closing(herd, go()))


def health(herd: Herd) -> Any:
    return asyncio.run(_closing(herd, herd.get_model("o").health()))


def test_names_and_hosts_are_normalised():
    assert normalize_name("llama3.2") == "llama3.2:latest"
    assert normalize_name("qwen3:8b") == "qwen3:8b"
    assert normalize_name("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF") == (
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:latest"
    )
    assert normalize_host(None) == "http://127.0.0.1:11434"
    assert normalize_host("0.0.0.0") == "http://127.0.0.1:11434"
    assert normalize_host("gpu-box:8080") == "http://gpu-box:8080"
    assert normalize_host("https://ollama.example.com/") == "https://ollama.example.com:443"


def test_chat_maps_options_usage_and_timings(ollama_server, herds):
    collected: list[Metric] = []

    class Collector:
        @hookimpl
        def on_metric(self, metric: Metric, herd: Herd) -> None:
            collected.append(metric)

    herd = make(ollama_server, herds, keep_alive="10m", num_ctx=8192)
    herd.register_plugin(Collector(), name="collector")
    response = herd.chat_sync(
        "o",
        "hello <b>&",
        temperature=0.0,
        seed=42,
        max_tokens=64,
        stop="###",
        num_gpu=20,
        num_thread=4,
    )
    assert response.content == "echo: hello <b>&"  # Ollama's \u003c escapes decode
    assert (response.model, response.provider, response.finish_reason) == (
        "llama3.2:latest",
        "ollama",
        "stop",
    )
    assert (response.usage.input_tokens, response.usage.output_tokens) == (26, 9)
    assert response.provider_metrics == {
        "herd.ollama.load_duration": 1.2,
        "herd.ollama.prompt_eval_duration": 0.3,
        "herd.ollama.eval_duration": 0.9,
        "herd.ollama.total_duration": 2.5,
    }
    body = ollama_server.recorder.last("/api/chat")["body"]
    assert body["model"] == "llama3.2:latest" and body["stream"] is False
    assert body["keep_alive"] == "10m"
    assert body["options"] == {
        "num_ctx": 8192,
        "temperature": 0.0,
        "seed": 42,
        "num_gpu": 20,
        "num_thread": 4,
        "num_predict": 64,
        "stop": ["###"],
    }
    emitted = {m.name: m.value for m in collected}
    assert emitted["herd.ollama.load_duration"] == 1.2


def test_call_options_override_alias_settings(ollama_server, herds):
    herd = make(ollama_server, herds, keep_alive="10m", num_ctx=8192)
    herd.chat_sync("o", "x", keep_alive=-1, num_ctx=2048)
    body = ollama_server.recorder.last("/api/chat")["body"]
    assert body["keep_alive"] == -1 and body["options"]["num_ctx"] == 2048


def test_length_finish(ollama_server, herds):
    assert make(ollama_server, herds).chat_sync("o", "x", max_tokens=1).finish_reason == "length"


def test_stream(ollama_server, herds):
    chunks, final = stream_all(make(ollama_server, herds), "stream <me>")
    assert len(chunks) > 2 and "".join(chunks) == final.content == "echo: stream <me>"
    assert (
        final.usage.output_tokens == 9
        and final.provider_metrics["herd.ollama.eval_duration"] == 0.9
    )
    assert ollama_server.recorder.last("/api/chat")["body"]["stream"] is True


def test_think_blocks_move_to_reasoning(ollama_server, herds):
    response = make(ollama_server, herds, model="qwen3").chat_sync("o", "capital of France?")
    assert (response.content, response.reasoning) == ("Paris.", "recall geography")
    chunks, final = stream_all(make(ollama_server, herds, model="qwen3"))
    assert "".join(chunks) == "Paris." and final.reasoning == "recall geography"
    assert all("<" not in c for c in chunks)


def test_think_option_uses_the_thinking_field(ollama_server, herds):
    response = make(ollama_server, herds, model="qwen3", think=True).chat_sync("o", "x")
    assert (response.content, response.reasoning) == ("Paris.", "recall geography")
    assert ollama_server.recorder.last("/api/chat")["body"]["think"] is True
    chunks, final = stream_all(make(ollama_server, herds, model="qwen3"), think=True)
    assert "".join(chunks) == "Paris." and final.reasoning == "recall geography"


def test_unclosed_think_is_all_reasoning(ollama_server, herds):
    response = make(ollama_server, herds, model="deepseek-r1:7b").chat_sync("o", "x")
    assert response.content == "" and response.reasoning == "still weighing it up"
    assert response.finish_reason == "length"


def test_structured_output_sends_format_schema(ollama_server, herds):
    schema = {
        "type": "object",
        "properties": {"action": {"enum": ["SELL", "BUY"]}, "size": {"type": "integer"}},
    }
    response = make(ollama_server, herds).chat_sync("o", "decide", response_format=schema)
    assert response.json_content() == {"action": "SELL", "size": 7}
    assert ollama_server.recorder.last("/api/chat")["body"]["format"] == schema
    response = make(ollama_server, herds).chat_sync(
        "o", "x", response_format={"type": "json_object"}
    )
    assert response.json_content() == {"ok": True}
    assert ollama_server.recorder.last("/api/chat")["body"]["format"] == "json"


def test_missing_model_says_herd_pull(ollama_server, herds):
    with pytest.raises(ModelNotFoundError) as info:
        make(ollama_server, herds, model="llama3.1").chat_sync("o", "x")
    assert str(info.value) == (
        f"Ollama at {ollama_server.url} has no model 'llama3.1:latest' (pulled here: "
        f"llama3.2:latest) — run `herd pull llama3.1:latest`"
    )
    with pytest.raises(ModelNotFoundError, match=r"run `herd pull mistral:latest`"):
        stream_all(make(ollama_server, herds, model="mistral"))


def test_server_not_running(herds):
    host = f"http://127.0.0.1:{free_port()}"
    expected = (
        f"Ollama is not running at {host} — start it with `ollama serve` (or point "
        f"OLLAMA_HOST / host in [models.o] at your server)"
    )
    with pytest.raises(ConnectionFailedError) as info:
        make(host, herds).chat_sync("o", "x")
    assert str(info.value) == expected
    with pytest.raises(ConnectionFailedError) as info:
        stream_all(make(host, herds))
    assert str(info.value) == expected


def test_ollama_host_from_env(ollama_server, herds):
    herd = make("", herds, env={"OLLAMA_HOST": ollama_server.url.removeprefix("http://")})
    assert herd.chat_sync("o", "x").content == "echo: x"


def test_timeout(ollama_server, herds):
    started = time.perf_counter()
    with pytest.raises(CallTimeoutError, match=r"gave no answer within 0\.3s"):
        make(ollama_server, herds, model="slow").chat_sync("o", "x", timeout=0.3)
    assert time.perf_counter() - started < 2.5


def test_malformed_body(ollama_server, herds):
    with pytest.raises(BadResponseError, match=r"malformed body .* check host points at an Ollama"):
        make(ollama_server, herds, model="malformed").chat_sync("o", "x")


def test_stream_without_done(ollama_server, herds):
    with pytest.raises(BadResponseError, match="without its final 'done' line"):
        stream_all(make(ollama_server, herds, model="truncated"))


def test_error_line_mid_stream(ollama_server, herds):
    with pytest.raises(
        ProviderError, match="failed mid-answer: llama runner process has terminated"
    ):
        stream_all(make(ollama_server, herds, model="midstream"))


def test_unknown_option(ollama_server, herds):
    with pytest.raises(BadRequestError, match="option 'n_gpu_layers' is not valid for the ollama"):
        make(ollama_server, herds).chat_sync("o", "x", n_gpu_layers=10)


def test_availability_needs_no_network():
    spec = ModelSpec(
        alias="llama3.2",
        provider="ollama",
        model="llama3.2",
        settings={"host": f"http://127.0.0.1:{free_port()}"},
    )
    assert OllamaModel.availability(spec, {}).ok
    empty = ModelSpec(alias="x", provider="ollama")
    assert OllamaModel.availability(empty, {}).fix == 'set model = "llama3.2" in [models.x]'


def test_health_walks_the_troubleshooting_flow(ollama_server, herds):
    down = health(make(f"http://127.0.0.1:{free_port()}", herds))
    assert not down.ok and down.detail.startswith("Ollama is not running at http://127.0.0.1:")
    assert down.fix.startswith("start it with `ollama serve`")
    missing = health(make(ollama_server, herds, model="phi4:14b"))
    assert (
        not missing.ok and missing.detail == f"model phi4:14b is not pulled on {ollama_server.url}"
    )
    assert missing.fix == "run `herd pull phi4:14b`"
    herd = make(ollama_server, herds, model="qwen3")
    asyncio.run(_closing(herd, herd.get_model("o").unload()))  # the server is shared
    ok = health(make(ollama_server, herds, model="qwen3"))
    assert ok.ok and ok.detail.startswith("qwen3:latest pulled (5.2 GB, Q4_K_M); not loaded")
    make(ollama_server, herds, model="qwen3").chat_sync("o", "x", keep_alive="1h")
    loaded = health(make(ollama_server, herds, model="qwen3"))
    assert "loaded, 2.6 GB in VRAM of 5.7 GB, until" in loaded.detail


def test_unload_frees_the_model(ollama_server, herds):
    from modelherd.plugins.providers.ollama.admin import ps

    herd = make(ollama_server, herds)
    herd.chat_sync("o", "x", keep_alive="5m")

    async def go() -> tuple[list[str], bool, list[str]]:
        model = herd.get_model("o")
        assert isinstance(model, OllamaModel)
        before = [m["name"] for m in await ps(model.client())]
        done = await model.unload()
        after = [m["name"] for m in await ps(model.client())]
        return before, done, after

    before, done, after = asyncio.run(_closing(herd, go()))
    assert "llama3.2:latest" in before and done and "llama3.2:latest" not in after
    assert ollama_server.recorder.last("/api/generate")["body"]["keep_alive"] == 0


# ---- CLI ----------------------------------------------------------------------


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_config(ollama_server, tmp_path: Path, monkeypatch) -> str:
    path = tmp_path / "plugins.toml"
    path.write_text(
        f'[models."llama3.2"]\nprovider = "ollama"\nmodel = "llama3.2"\nhost = "{ollama_server.url}"\n'
        f'[models.mistral]\nprovider = "ollama"\nmodel = "mistral"\nhost = "{ollama_server.url}"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    return str(path)


def test_cli_pull_with_progress(cli_config, ollama_server, capsys):
    code, out, err = run_cli(["--config", cli_config, "pull", "phi4"], capsys)
    assert code == 0, err
    assert f"✓ phi4:latest is ready on {ollama_server.url}" in out
    assert "pulling manifest" in err and "success" in err
    assert ollama_server.recorder.last("/api/pull")["body"]["model"] == "phi4:latest"
    code, out, _ = run_cli(["--config", cli_config, "ollama", "list", "--json"], capsys)
    listed = json.loads(out)
    names = {m["name"] for m in listed["models"]}
    assert code == 0 and "phi4:latest" in names
    assert listed["configured_not_pulled"] == {"mistral:latest": ["mistral"]}
    llama = next(m for m in listed["models"] if m["name"] == "llama3.2:latest")
    assert llama["aliases"] == ["llama3.2"] and llama["quantization_level"] == "Q4_K_M"


def test_cli_pull_json_and_unknown_model(cli_config, capsys):
    code, out, _ = run_cli(["--config", cli_config, "pull", "llama3.2", "--json"], capsys)
    assert code == 0 and json.loads(out)["status"] == "success"
    code, _, err = run_cli(["--config", cli_config, "pull", "nope"], capsys)
    assert code == 1
    assert err.strip().endswith(
        "could not pull 'nope:latest': pull model manifest: file does "
        "not exist — check the name at https://ollama.com/library"
    )


def test_cli_pull_when_server_is_down(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    host = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli(["pull", "llama3.2", "--host", host], capsys)
    assert (
        code == 1
        and f"error: Ollama is not running at {host} — start it with `ollama serve`" in err
    )


def test_cli_show_ps_unload(cli_config, ollama_server, capsys):
    code, out, _ = run_cli(["--config", cli_config, "ollama", "show", "llama3.2", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["context_length"] == 131072 and "tools" in info["capabilities"]
    assert info["parameter_count"] == 3212749888
    code, out, _ = run_cli(["--config", cli_config, "ollama", "show", "llama3.2"], capsys)
    assert "context_length: 131072" in out and "quantization_level: Q4_K_M" in out
    code, out, _ = run_cli(["--config", cli_config, "chat", "-m", "llama3.2", "hello"], capsys)
    assert code == 0 and out.startswith("echo: hello")
    code, out, _ = run_cli(["--config", cli_config, "ollama", "ps", "--json"], capsys)
    loaded = json.loads(out)["models"]
    entry = next(m for m in loaded if m["name"] == "llama3.2:latest")
    assert entry["size_vram"] == 1_000_000_000 and entry["expires_at"]
    code, out, _ = run_cli(["--config", cli_config, "ollama", "ps"], capsys)
    assert "llama3.2:latest" in out
    code, out, _ = run_cli(["--config", cli_config, "ollama", "unload", "llama3.2"], capsys)
    assert code == 0 and out.strip() == f"llama3.2:latest unloaded from {ollama_server.url}"
    code, out, _ = run_cli(["--config", cli_config, "ollama", "ps", "--json"], capsys)
    assert "llama3.2:latest" not in {m["name"] for m in json.loads(out)["models"]}


def test_cli_show_missing_model(cli_config, capsys):
    code, _, err = run_cli(["--config", cli_config, "ollama", "show", "mistral"], capsys)
    assert (
        code == 1
        and "has no model 'mistral:latest'" in err
        and "run `herd pull mistral:latest`" in err
    )


def test_doctor_walks_the_ollama_flow(ollama_server, tmp_path, monkeypatch, capsys):
    """`herd doctor`: a stopped server and a missing model, each with its fix."""
    down = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "plugins.toml"
    config.write_text(
        f'[models.stopped]\nprovider = "ollama"\nmodel = "llama3.2"\nhost = "{down}"\n'
        f'[models.mistral]\nprovider = "ollama"\nmodel = "mistral"\nhost = "{ollama_server.url}"\n'
        f'[models.ready]\nprovider = "ollama"\nmodel = "llama3.2"\nhost = "{ollama_server.url}"\n'
    )
    monkeypatch.chdir(tmp_path)
    _, out, _ = run_cli(["--config", str(config), "doctor", "--json"], capsys)
    found = {f["area"]: f for f in json.loads(out)}
    stopped = found["model stopped"]
    assert stopped["message"].startswith(f"Ollama is not running at {down}")
    assert stopped["fix"].startswith("start it with `ollama serve`")
    assert found["model mistral"]["message"] == (
        f"model mistral:latest is not pulled on {ollama_server.url}"
    )
    assert found["model mistral"]["fix"] == "run `herd pull mistral:latest`"
    assert found["model ready"]["level"] == "ok"
    assert found["model ready"]["message"].startswith("llama3.2:latest pulled (2.0 GB, Q4_K_M)")


def test_cli_pull_refuses_a_cloud_alias(cli_config, capsys):
    code, _, err = run_cli(["--config", cli_config, "pull", "claude"], capsys)
    assert code == 2
    assert (
        "'claude' is served by anthropic, not Ollama — give an Ollama alias or model "
        "name (e.g. llama3.2)"
    ) in err
