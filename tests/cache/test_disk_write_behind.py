"""The disk tier's write-behind: a store returns before SQLite commits it.

What must hold: a get for a key still pending is a hit; closing the herd (or, for a
script that never closes it, interpreter exit) writes everything pending, so a new
herd on the same file sees it; a failed batch is reported as a failed store always
was; and the buffer is bounded — past `write_behind_max` a store waits for the disk.
The writer is held back in these tests by taking the tier's write lock, so "still
pending" is a fact, not a race.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cache_helpers import cached_herd
from modelherd.kernel import Herd
from modelherd.plugins.cache.disk_tier import DiskTier
from modelherd.testing import MockModel


def disk(path: Path, **extra: Any) -> dict[str, dict[str, Any]]:
    # memory off: every hit below must come from the disk tier
    return {"cache_memory": {"enabled": False}, "cache_disk": {"path": str(path), **extra}}


def echo_model() -> MockModel:
    model = MockModel()
    model.enqueue(*[lambda r: f"answer to {r.messages[-1].content}"] * 500)
    return model


def tier_of(herd: Herd) -> DiskTier:
    assert herd.cache is not None
    (tier,) = [t for t in herd.cache.tiers if isinstance(t, DiskTier)]
    return tier


def rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])


def test_a_pending_answer_is_a_hit_before_it_reaches_the_file(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, model = cached_herd(echo_model(), plugins=disk(db))

    async def go() -> None:
        async with herd:
            tier = tier_of(herd)
            with tier._write_lock:  # the writer cannot commit while we hold this
                first = await herd.chat("mock", "q")
                assert tier.stats()["pending"] == 1
                assert rows(db) == 0  # not on disk yet: the answer came back first
                second = await herd.chat("mock", "q")
                ttl_hit, left = await tier.get_with_ttl(next(iter(tier._pending)))
            assert (first.cache_tier, second.cache_tier) == (None, "disk")
            assert second.content == "answer to q" and len(model.history) == 1
            assert ttl_hit is not None and left is not None and 0 < left <= 7 * 24 * 3600
            await tier.flush()
            assert rows(db) == 1 and tier.stats()["pending"] == 0
            assert tier.counters.stores == 1 and tier.counters.hits == 1  # the pipeline counts

    asyncio.run(go())


def test_the_stored_answer_is_the_one_returned_even_if_the_caller_changes_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db))

    async def go() -> str:
        async with herd:
            tier = tier_of(herd)
            with tier._write_lock:
                answer = await herd.chat("mock", "q")
                answer.content = "changed by the caller after the call"
            return (await herd.chat("mock", "q")).content

    assert asyncio.run(go()) == "answer to q"


def test_closing_the_herd_writes_what_is_pending(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db))

    async def go() -> None:
        async with herd:
            tier = tier_of(herd)
            tier._write_lock.acquire()
            for i in range(20):
                await herd.chat("mock", f"q{i}")
            assert tier.stats()["pending"] == 20
            tier._write_lock.release()  # aclose must not return before the writes

    asyncio.run(go())
    assert rows(db) == 20
    herd2, model2 = cached_herd(MockModel(default="not cached"), plugins=disk(db))

    async def again() -> list[tuple[str, str | None]]:
        async with herd2:
            return [
                ((r := await herd2.chat("mock", f"q{i}")).content, r.cache_tier) for i in range(20)
            ]

    assert asyncio.run(again()) == [(f"answer to q{i}", "disk") for i in range(20)]
    assert model2.history == []


def test_a_script_that_never_closes_its_herd_still_stores_at_exit(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    script = textwrap.dedent(f"""
        import asyncio
        from modelherd.testing import MockModel, make_herd
        from modelherd.plugins.cache import disk as cache_disk
        from modelherd.plugins.cache.disk_tier import DiskTier
        # no background writer at all: only the exit handler can write these
        DiskTier._start_writer = lambda self: None
        model = MockModel()
        model.enqueue(*[lambda r: "answer to " + r.messages[-1].content] * 10)
        herd = make_herd({{"mock": model}}, plugins=(cache_disk,),
                         config={{"plugins": {{"cache_disk": {{"path": {str(db)!r}}}}}}})
        async def main():
            await herd.start()
            for i in range(5):
                await herd.chat("mock", f"q{{i}}")
            tier = [t for t in herd.cache.tiers if t.name == "disk"][0]
            print(tier.stats()["pending"])
        asyncio.run(main())  # and exit without herd.aclose()
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["5"]
    assert rows(db) == 5


def test_a_failed_batch_is_counted_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db, busy_timeout_ms=20))

    async def go() -> None:
        async with herd:
            tier = tier_of(herd)
            # another process holds the file's write lock past the busy timeout
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            with tier._write_lock:
                for i in range(3):
                    await herd.chat("mock", f"q{i}")
            await tier.flush()
            assert tier.counters.errors == 3 and tier.counters.stores == 0
            assert tier.stats()["pending"] == 0  # dropped, as a failed store always was
            other.execute("ROLLBACK")
            other.close()
            # the next store works again
            await herd.chat("mock", "after")
            await tier.flush()
            assert tier.counters.stores == 1

    asyncio.run(go())
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "modelherd.cache.disk" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "could not store an answer (database is locked)" in warnings[0]
    assert "free disk space or lower max_bytes" in warnings[0]
    assert rows(db) == 1


def test_the_buffer_is_bounded_past_it_a_store_waits_for_the_disk(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db, write_behind_max=2))

    async def go() -> None:
        async with herd:
            tier = tier_of(herd)
            tier._write_lock.acquire()
            try:
                await asyncio.wait_for(herd.chat("mock", "q1"), 5)
                await asyncio.wait_for(herd.chat("mock", "q2"), 5)
                third = asyncio.ensure_future(herd.chat("mock", "q3"))
                await asyncio.sleep(0.3)
                # the buffer is full: the third call waits for the disk, not the buffer
                assert not third.done()
                assert tier.stats()["pending"] == 3
            finally:
                tier._write_lock.release()
            assert (await asyncio.wait_for(third, 10)).content == "answer to q3"
            assert tier.stats()["pending"] == 0
            assert rows(db) == 3  # the waiting call returned after its write

    asyncio.run(go())


def test_write_behind_off_commits_before_the_call_returns(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db, write_behind_max=0))

    async def go() -> list[int]:
        async with herd:
            seen = []
            for i in range(3):
                await herd.chat("mock", f"q{i}")
                seen.append(rows(db))
            assert tier_of(herd)._writer_thread is None  # no background writer at all
            return seen

    assert asyncio.run(go()) == [1, 2, 3]


def test_clear_drops_pending_answers_too(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, model = cached_herd(echo_model(), plugins=disk(db))

    async def go() -> dict[str, Any]:
        async with herd:
            tier = tier_of(herd)
            with tier._write_lock:
                await herd.chat("mock", "q")
            await tier.flush()
            with tier._write_lock:
                await herd.chat("mock", "r")
            assert tier.stats()["pending"] == 1
            removed = await tier.clear()
            again = await herd.chat("mock", "r")
            await tier.flush()
            return {"removed": removed, "tier": again.cache_tier, "calls": len(model.history)}

    assert asyncio.run(go()) == {"removed": 2, "tier": None, "calls": 3}
    assert rows(db) == 1  # only the answer stored after the clear


def test_write_behind_max_must_not_be_negative(tmp_path: Path) -> None:
    from modelherd.errors import ConfigError

    herd, _ = cached_herd(plugins=disk(tmp_path / "c.sqlite3", write_behind_max=-1))
    with pytest.raises(ConfigError, match=r"write_behind_max.*must not be negative"):
        asyncio.run(herd.start())


def test_many_concurrent_stores_all_land(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db))

    async def go() -> dict[str, Any]:
        async with herd:
            await asyncio.gather(*(herd.chat("mock", f"q{i}") for i in range(300)))
            tier = tier_of(herd)
            await tier.flush()
            return dict(tier.counters.as_dict())

    counters = asyncio.run(go())
    assert counters["stores"] == 300 and counters["errors"] == 0
    assert rows(db) == 300


def test_answers_finishing_close_together_share_one_commit(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db))
    batches: list[int] = []

    async def go() -> None:
        async with herd:
            tier = tier_of(herd)
            write_batch = tier._write_batch

            def recording(batch: Any) -> Any:
                batches.append(len(batch))
                return write_batch(batch)

            tier._write_batch = recording  # type: ignore[method-assign]
            for i in range(50):
                await herd.chat("mock", f"q{i}")
            await tier.flush()

    asyncio.run(go())
    assert sum(batches) == 50 and rows(db) == 50
    # one call after another, each a fraction of a millisecond: a handful of commits
    assert len(batches) <= 10, batches


def test_the_writer_survives_a_bug_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db))
    failures = [RuntimeError("boom")]

    async def go() -> None:
        async with herd:
            tier = tier_of(herd)
            write_batch = tier._write_batch

            def sometimes(batch: Any) -> Any:
                if failures:
                    raise failures.pop()
                return write_batch(batch)

            tier._write_batch = sometimes  # type: ignore[method-assign]
            await herd.chat("mock", "q0")
            for _ in range(100):  # the writer's next round, after its pause, stores it
                await asyncio.sleep(0.02)
                if rows(db) == 1:
                    break
            assert rows(db) == 1 and tier.counters.errors == 1

    asyncio.run(go())
    warnings = [r.getMessage() for r in caplog.records if r.name == "modelherd.cache.disk"]
    assert len(warnings) == 1 and "the writer hit RuntimeError (boom); it goes on" in warnings[0]
