"""Meta-tests: every hookspec is documented with its exact signature and exercised."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from modelherd import hookspecs

ROOT = Path(__file__).resolve().parents[2]


def hookspec_signatures() -> dict[str, str]:
    found = {}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(fn, "modelherd_spec"):
            found[name] = f"{name}{inspect.signature(fn)}".replace("'", "")
    return found


def test_there_are_hookspecs() -> None:
    assert {
        "provide_model",
        "before_call",
        "after_call",
        "on_error",
        "on_metric",
        "startup",
        "shutdown",
        "register_commands",
        "register_agents",
    } <= set(hookspec_signatures())


def test_every_hookspec_is_documented_with_its_exact_signature() -> None:
    docs = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    missing = [sig for sig in hookspec_signatures().values() if f"`{sig}`" not in docs]
    assert missing == [], f"document these in docs/hooks.md: {missing}"


def test_every_hookspec_has_a_docstring() -> None:
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(fn, "modelherd_spec"):
            assert (fn.__doc__ or "").strip(), f"hookspec {name} has no docstring"


def test_every_hookspec_is_implemented_by_some_test() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py"))
    unexercised = [
        name
        for name in hookspec_signatures()
        if not re.search(rf"@hookimpl[^\n]*\n\s*(async )?def {name}\(", sources)
    ]
    assert unexercised == [], f"no test implements these hooks: {unexercised}"
