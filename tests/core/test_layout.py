"""The source tree is what pyproject.toml installs, and entry modules stay light."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: package-dir roots: installed package name -> folder in the repository
ROOTS = {"modelherd": "core", "modelherd.plugins": "plugins", "modelherd.agents": "agents"}


def _folders_with_init() -> set[str]:
    found: set[str] = set()
    for package, folder in ROOTS.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join((package, *rel.parts)) if rel.parts else package)
    return found


def test_the_packages_list_names_every_folder_and_nothing_else() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    # core/ holds only modules; plugins/ and agents/ are installed from their own roots
    on_disk = _folders_with_init() | {"modelherd"}
    assert listed == on_disk, (
        f"pyproject.toml [tool.setuptools] packages is out of step with the tree: "
        f"missing {sorted(on_disk - listed)}, stale {sorted(listed - on_disk)}"
    )


def test_every_entry_point_names_a_module_that_exists() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for name, target in pyproject["project"]["entry-points"]["modelherd"].items():
        module = target.split(":")[0]
        package, _, rest = module.partition(".")
        assert package == "modelherd", target
        parts = rest.split(".")
        folder = ROOTS.get(f"modelherd.{parts[0]}")
        assert folder is not None, f"entry point {name} = {target}: not under plugins/ or agents/"
        path = ROOT / folder / Path(*parts[1:])
        assert (path / "__init__.py").is_file() or path.with_suffix(".py").is_file(), (
            f"entry point {name} = {target}: no such module"
        )


def test_no_module_is_named_core_or_hooks() -> None:
    # the old `tenants.py` + `tenants_core.py` split said nothing; files say what they hold
    bad = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "plugins").rglob("*.py")
        if p.stem.endswith(("_core", "_hooks"))
    ]
    assert bad == []


def test_an_entry_module_imports_nothing_heavy() -> None:
    """Importing every plugin's entry module pulls in no SDK and no runtime module."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    modules = sorted(
        {t.split(":")[0] for t in pyproject["project"]["entry-points"]["modelherd"].values()}
    )
    heavy = [
        "anthropic",
        "openai",
        "ollama",
        "redis",
        "pynvml",
        "opentelemetry",
        "xllamacpp",
        "llama_cpp",
        "numpy",
        # what runs a call, imported on the first call (every start imports the entries)
        "modelherd.plugins.providers.llamacpp.engine",
        "modelherd.plugins.providers.llamacpp.tool_messages",
        "modelherd.plugins.resources.tenants.budget_settings",
        "modelherd.plugins.cache.disk_tier",
        "sqlite3",
        "concurrent.futures.thread",
    ]
    script = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules] + "
        "[m for m in sys.modules if m.startswith('modelherd.') and m.endswith('.runtime')]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", f"entry modules imported: {out.stdout.strip()}"
