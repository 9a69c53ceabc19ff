"""The examples in docs/plugins.md run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from modelherd.testing import MockModel, make_herd

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_example_provider_plugin_and_its_test_work(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plugin_src, test_src = python_blocks()[0], python_blocks()[1]
    module = types.ModuleType("herd_reverse")
    exec(compile(plugin_src, "herd_reverse.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "herd_reverse", module)
    namespace: dict[str, object] = {}
    exec(compile(test_src, "test_herd_reverse.py", "exec"), namespace)
    namespace["test_reverse"]()  # type: ignore[operator]
    herd = make_herd(
        config={"models": {"b": {"provider": "reverse", "model": "r", "uppercase": True}}},
        plugins=(module,),
    )
    assert herd.chat_sync("b", "hello").content == "OLLEH"


def test_the_fixture_example_works() -> None:
    namespace: dict[str, object] = {}
    exec(compile(python_blocks()[2], "test_shout.py", "exec"), namespace)
    model = MockModel()
    herd = make_herd({"mock": model})
    registered: list[object] = []
    namespace["test_shout"](herd, model, lambda p: registered.append(herd.register_plugin(p)))  # type: ignore[operator]


def test_the_tools_agent_example_runs_offline_and_prints_what_the_doc_says(capsys) -> None:  # type: ignore[no-untyped-def]
    doc = (DOC.parent / "tools.md").read_text(encoding="utf-8")
    section = doc.split("### A complete agent, offline", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    printed = re.findall(r"It prints:\n\n```\n(.*?)```", section, flags=re.S)[0]
    exec(compile(code, "tools_agent_example.py", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == printed
