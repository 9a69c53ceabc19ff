"""How many slots the embedded engine gets by default (no model is loaded here)."""

from __future__ import annotations

import pytest
from modelherd.plugins.providers.llamacpp.settings import (
    DEFAULT_SLOTS,
    LlamaCppSettings,
    default_parallel,
    planned_slots,
)

MiB = 1024**2


@pytest.mark.parametrize("cores", [1, 2, 64])
def test_default_is_eight_slots_whatever_the_cores(
    cores: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on 2 cores the old rule (2 per core) gave 4: a 5-seed swarm queued its 5th member
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert DEFAULT_SLOTS == 8
    assert default_parallel(kv_bytes_per_slot=47 * MiB, free_bytes=20 * 1024 * MiB) == 8


def test_fewer_slots_when_their_kv_would_pass_a_quarter_of_free_memory() -> None:
    # 1 GiB per slot, 12 GiB free: a quarter is 3 GiB -> 3 slots; never fewer than 1
    assert default_parallel(1024 * MiB, 12 * 1024 * MiB) == 3
    assert default_parallel(1024 * MiB, 1024 * MiB) == 1


def test_planned_slots_follow_the_engine_and_the_setting() -> None:
    free = 20 * 1024 * MiB
    assert planned_slots(LlamaCppSettings(), 47 * MiB, free) == 8
    assert planned_slots(LlamaCppSettings(parallel=3), 47 * MiB, free) == 3
    assert planned_slots(LlamaCppSettings(engine="llama-cpp-python", parallel=3), 1, free) == 1
