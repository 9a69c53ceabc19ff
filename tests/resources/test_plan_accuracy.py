"""Estimated vs measured memory when llama.cpp really loads the embedded GGUF, on the
default engine (xllamacpp) and, when it is built and runs here, llama-cpp-python."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.llama

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        import plan_accuracy
    finally:
        sys.path.remove(str(BENCH))
    return plan_accuracy


@pytest.mark.parametrize("engine", ["xllamacpp", "llama-cpp-python"])
@pytest.mark.parametrize(("n_ctx", "kv_type"), [(2048, "f16"), (4096, "q8_0")])
def test_estimate_within_15_percent_of_rss_growth(n_ctx: int, kv_type: str, engine: str) -> None:
    plan_accuracy = _bench()
    missing = plan_accuracy.engine_missing(engine)
    if missing:
        pytest.skip(missing)
    row = plan_accuracy.measure(n_ctx, True, kv_type, engine)
    assert abs(row["resident_error_pct"]) <= 15, row
    assert row["kv_error_pct"] == pytest.approx(0, abs=0.1), row  # llama.cpp's own KV size
    if engine == "llama-cpp-python":
        assert abs(row["compute_error_pct"]) <= 5, row
    else:
        # the server's flash-attention graph reserves less: herd's budget is an upper bound
        assert row["compute_estimated_mib"] >= row["compute_llamacpp_mib"], row
