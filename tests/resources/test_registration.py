"""With the default configuration the resource plugins cost nothing per call."""

from __future__ import annotations

import sys

import pytest
from modelherd import Herd
from modelherd.config import HerdConfig

pytestmark = pytest.mark.anyio

MINE = ("optimizer-calls", "scheduler-calls", "tenants-calls")


async def test_default_config_registers_no_per_call_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # a CPU-only machine, whatever this one is
    herd = Herd(HerdConfig.model_validate({"models": {"local": {"provider": "llamacpp"}}}), env={})
    assert herd.pm is not None  # loads the entry-point plugins
    names = {record.name for record in herd.plugin_records if record.status == "loaded"}
    assert {"optimizer", "scheduler", "tenants"} <= names
    await herd.start()
    for name in MINE:
        assert herd.pm.get_plugin(name) is None
    for plugin_name in ("optimizer", "scheduler", "tenants"):
        module = herd.pm.get_plugin(plugin_name)
        hooks = {impl.name for impl in herd.pm.get_hookcallers(module) or []}
        assert hooks <= {"startup", "shutdown", "register_commands", "register_settings"}, (
            plugin_name,
            hooks,
        )
    await herd.aclose()


async def test_configured_features_register_their_hooks() -> None:
    herd = Herd(
        HerdConfig.model_validate(
            {
                "models": {"local": {"provider": "llamacpp"}},
                "tenants": {"alice": {"tier": "basic"}},
                "plugins": {"scheduler": {"enabled": True}, "optimizer": {"memory_budget_gb": 4}},
            }
        ),
        env={},
    )
    await herd.start()
    for name in MINE:
        assert herd.pm.get_plugin(name) is not None, name
    assert herd._has["acquire_admission"] and herd._has["before_call"]
    await herd.aclose()
    for name in MINE:
        assert herd.pm.get_plugin(name) is None, name
