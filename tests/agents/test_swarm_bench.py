"""The fan-out targets from bench/swarm.py, asserted (best of a few runs, to ride out a
busy CI machine; the bench itself prints medians)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "swarm.py"


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_swarm", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("members", "latency", "target"), [(8, 0.2, 1.1), (64, 0.05, 1.2)])
def test_swarm_costs_the_slowest_member_not_the_sum(members: int, latency: float,
                                                    target: float) -> None:
    result = load_bench().measure(members, latency, repeats=5)
    assert result["best_ratio"] <= target, result
    assert result["best_s"] >= latency  # everyone really waited for their answer
