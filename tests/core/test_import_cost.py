"""Importing modelherd and loading every plugin must not import an SDK or NVML."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "llama_cpp",
    "xllamacpp",
    "anthropic",
    "openai",
    "ollama",
    "redis",
    "pynvml",
    "opentelemetry",
    "numpy",
]

SCRIPT = """
import json, sys, time
start = time.perf_counter()
import modelherd
herd = modelherd.Herd(env={})
herd.pm
herd.providers
herd.agents
elapsed = time.perf_counter() - start
heavy = [m for m in %r if m in sys.modules]
failed = [r.name for r in herd.plugin_records if r.status == "failed"]
print(json.dumps({"heavy": heavy, "elapsed": elapsed, "failed": failed,
                  "loaded": [r.name for r in herd.plugin_records if r.status == "loaded"]}))
"""


def test_loading_all_plugins_imports_no_heavy_module(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT % HEAVY],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert "llamacpp" in result["loaded"]
    # a generous bound only to catch gross regressions; bench/overhead.py measures it
    assert result["elapsed"] < 2.0
