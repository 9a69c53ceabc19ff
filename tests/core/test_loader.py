"""Plugin discovery: one entry-point path, blocked before import, fault tolerant."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from modelherd import Herd, PluginLoadError
from modelherd.config import HerdConfig
from modelherd.loader import load_entry_point_plugins, new_plugin_manager


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "good_plugin.py").write_text(
        textwrap.dedent(
            """
            from modelherd import hookimpl
            IMPORTED = True

            @hookimpl
            def on_metric(metric, herd):
                pass
            """
        )
    )
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "tracked_plugin.py").write_text(
        "import builtins\nbuiltins.TRACKED_IMPORTED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("good_plugin", "broken_plugin", "tracked_plugin"):
        sys.modules.pop(name, None)


def eps(*pairs: tuple[str, str]) -> list[EntryPoint]:
    return [EntryPoint(name=n, value=v, group="modelherd") for n, v in pairs]


def test_broken_plugin_is_reported_and_the_rest_load(plugin_dir: Path) -> None:
    pm = new_plugin_manager()
    records = load_entry_point_plugins(
        pm, set(), eps=eps(("good", "good_plugin"), ("broken", "broken_plugin"))
    )
    by_name = {r.name: r for r in records}
    assert by_name["good"].status == "loaded" and by_name["good"].hooks == ["on_metric"]
    assert by_name["broken"].status == "failed"
    assert by_name["broken"].error == "RuntimeError: boom at import (broken_plugin.py:1)"


def test_strict_makes_a_broken_plugin_fatal_with_a_fix(plugin_dir: Path) -> None:
    with pytest.raises(
        PluginLoadError,
        match=r"plugin 'broken' .*failed to load: RuntimeError: boom.*\[plugins\] disable",
    ):
        load_entry_point_plugins(
            new_plugin_manager(), set(), strict=True, eps=eps(("broken", "broken_plugin"))
        )


def test_disable_blocks_before_import(plugin_dir: Path) -> None:
    import builtins

    records = load_entry_point_plugins(
        new_plugin_manager(), {"tracked"}, eps=eps(("tracked", "tracked_plugin"))
    )
    assert records[0].status == "disabled"
    assert not getattr(builtins, "TRACKED_IMPORTED", False)
    assert "tracked_plugin" not in sys.modules


def test_herd_plugins_env_is_an_allowlist(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERD_PLUGINS", "good")
    records = load_entry_point_plugins(
        new_plugin_manager(), set(), eps=eps(("good", "good_plugin"), ("tracked", "tracked_plugin"))
    )
    assert {r.name: r.status for r in records} == {"good": "loaded", "tracked": "disabled"}
    assert "tracked_plugin" not in sys.modules


def test_trace_hooks_prints_every_hook_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERD_TRACE_HOOKS", "1")
    pm = new_plugin_manager()
    pm.hook.register_providers(register=lambda cls: None)
    assert "register_providers" in capsys.readouterr().err


def test_builtin_plugins_come_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    herd = Herd(HerdConfig(), env={})
    records = {r.name: r for r in (herd.pm and herd.plugin_records)}
    assert records["llamacpp"].distribution == "modelherd"
    assert records["llamacpp"].status == "loaded"
    assert "llamacpp" in herd.providers


def test_config_disable_list_reaches_the_loader(tmp_path: Path) -> None:
    config = HerdConfig.model_validate({"plugins": {"disable": ["llamacpp"]}})
    herd = Herd(config, env={})
    records = {r.name: r for r in (herd.pm and herd.plugin_records)}
    assert records["llamacpp"].status == "disabled"
    assert "llamacpp" not in herd.providers


def test_a_plugin_raising_in_a_registration_hook_is_isolated() -> None:
    from modelherd import hookimpl
    from modelherd.testing import MockModel, make_herd

    class Exploding:
        __name__ = "exploding"

        @hookimpl
        def register_providers(self, register):  # type: ignore[no-untyped-def]
            raise ValueError("bad provider table")

    herd = make_herd({"m": MockModel()}, plugins=(Exploding(),))
    assert "mock" in herd.providers
    failed = next(r for r in herd.plugin_records if r.name == "exploding")
    assert (
        failed.status == "failed"
        and "register_providers raised ValueError: bad provider table" in failed.error
    )


def test_a_plugin_family_adds_its_own_hookspecs() -> None:
    import types

    import pluggy
    from modelherd import hookimpl
    from modelherd.testing import make_herd

    spec = pluggy.HookspecMarker("modelherd")
    family = types.ModuleType("family_specs")

    @spec(firstresult=True)
    def provide_quote(symbol: str) -> float | None:
        """A family hook: the first source that knows the symbol answers."""

    family.provide_quote = provide_quote  # type: ignore[attr-defined]

    class Family:
        __name__ = "family"

        @hookimpl
        def add_hookspecs(self, pluginmanager: pluggy.PluginManager) -> None:
            pluginmanager.add_hookspecs(family)

    class Fallback:
        __name__ = "fallback-source"

        @hookimpl(trylast=True)
        def provide_quote(self, symbol: str) -> float | None:
            return 1.0

    class Real:
        __name__ = "real-source"

        @hookimpl
        def provide_quote(self, symbol: str) -> float | None:
            return 42.0 if symbol == "BTC" else None

    herd = make_herd(plugins=(Family(), Fallback(), Real()))
    # firstresult comes from the family's spec: one value, the best source's
    assert herd.hook.provide_quote(symbol="BTC") == 42.0
    assert herd.hook.provide_quote(symbol="XYZ") == 1.0
    from modelherd import hookspecs as kernel_specs

    assert not hasattr(kernel_specs, "provide_market_data")  # the agents bring their own


def test_the_plugin_manager_finds_exactly_the_hooks_pluggy_would() -> None:
    # HerdPluginManager skips a module's non-hooks before pluggy's getattr_static
    # lookup (core/loader.py); on every installed entry module, and on one holding
    # each kind of name, it must register the same hooks as pluggy's own manager
    import types
    from importlib.metadata import entry_points

    import pluggy
    from modelherd import hookimpl, hookspecs
    from modelherd.loader import GROUP, HerdPluginManager

    odd = types.ModuleType("odd_plugin")

    @hookimpl
    def on_metric(metric: object, herd: object) -> None:
        pass

    def startup(herd: object) -> None:  # unmarked: no hook
        pass

    class Holder:
        @staticmethod
        @hookimpl
        def shutdown(herd: object) -> None:
            pass

    odd.on_metric = on_metric  # type: ignore[attr-defined]
    odd.startup = startup  # type: ignore[attr-defined]
    odd.shutdown = Holder.__dict__["shutdown"]  # type: ignore[attr-defined]  # a staticmethod
    odd.register_providers = 3  # type: ignore[attr-defined]  # a hook's name, not a function
    odd.Holder = Holder  # type: ignore[attr-defined]
    plugins = [odd, *(ep.load() for ep in entry_points(group=GROUP))]

    def hooks(manager: pluggy.PluginManager) -> list[tuple[str, str]]:
        manager.add_hookspecs(hookspecs)
        for index, plugin in enumerate(plugins):
            manager.register(plugin, name=str(index))
        return sorted(
            (caller.name, impl.plugin_name)
            for caller in manager.hook.__dict__.values()
            if isinstance(caller, pluggy.HookCaller)
            for impl in caller.get_hookimpls()
        )

    ours = hooks(HerdPluginManager(GROUP))
    assert ours == hooks(pluggy.PluginManager(GROUP))
    assert ("on_metric", "0") in ours and ("shutdown", "0") in ours
    assert ("startup", "0") not in ours and ("register_providers", "0") not in ours
    assert len(ours) > 40  # the entry modules' hooks were found at all
