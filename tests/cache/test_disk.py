"""The L2 disk tier: restarts, several processes, the size cap, and every way a file breaks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cache_helpers import cached_herd
from modelherd.errors import ConfigError, PluginLoadError
from modelherd.testing import MockModel

KEY = "T1mM0fQm2yXH3Rzw3b1bSg8u8Qv5m7P9l8b7v2n4k1c="  # a valid Fernet key (test only)
OTHER_KEY = "Zx3b7V4fQ1n8K2m5P9r6T3w8Y1u4I7o0A2s5D8f1G4h="


def disk(path: Path, **extra: Any) -> dict[str, dict[str, Any]]:
    # memory off: every hit below must come from the disk
    return {"cache_memory": {"enabled": False}, "cache_disk": {"path": str(path), **extra}}


def ask(herd: Any, prompts: list[str], **kw: Any) -> list[tuple[str, str | None]]:
    async def go() -> list[tuple[str, str | None]]:
        async with herd:
            out = []
            for p in prompts:
                r = await herd.chat("mock", p, **kw)
                out.append((r.content, r.cache_tier))
            return out

    return asyncio.run(go())


def echo_model(**kw: Any) -> MockModel:
    model = MockModel(**kw)
    model.default = ""  # unused: every answer is computed from the prompt
    model.enqueue(*[lambda r: f"answer to {r.messages[-1].content}"] * 500)
    return model


def disk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "modelherd.cache.disk" and r.levelno == logging.WARNING
    ]


def test_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db))
    assert ask(herd, ["a"]) == [("answer to a", None)]
    herd2, model2 = cached_herd(echo_model(), plugins=disk(db))
    assert ask(herd2, ["a", "b"]) == [("answer to a", "disk"), ("answer to b", None)]
    assert len(model2.history) == 1


def test_shared_by_processes(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite3"
    script = textwrap.dedent(f"""
        import asyncio, json
        from modelherd.testing import MockModel, make_herd
        from modelherd.plugins.cache import disk as cache_disk
        model = MockModel(default="from the other process")
        herd = make_herd({{"mock": model}}, plugins=(cache_disk,),
                         config={{"plugins": {{"cache_disk": {{"path": {str(db)!r}}}}}}})
        async def main():
            async with herd:
                r = await herd.chat("mock", "shared question")
                print(json.dumps([r.content, r.cache_tier]))
        asyncio.run(main())
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == ["from the other process", None]
    herd, model = cached_herd(plugins=disk(db))
    assert ask(herd, ["shared question"]) == [("from the other process", "disk")]
    assert model.history == []


def test_size_cap_evicts_least_recently_used(tmp_path: Path) -> None:
    db = tmp_path / "small.sqlite3"
    big = "x" * 4000
    model = MockModel()
    model.enqueue(*[lambda r: f"{r.messages[-1].content} {big}"] * 500)
    herd, _ = cached_herd(model, plugins=disk(db, max_bytes=150_000))

    async def go() -> list[str | None]:
        async with herd:
            await herd.chat("mock", "keep")
            for i in range(60):
                await herd.chat("mock", f"filler {i}")
                # "keep" is used all along, so it stays the most recently used
                assert (await herd.chat("mock", "keep")).cache_tier == "disk"
            assert herd.cache is not None
            disk_tier = next(t for t in herd.cache.tiers if t.name == "disk")
            await disk_tier.flush()  # type: ignore[attr-defined]  # write-behind
            first = await herd.chat("mock", "filler 0")
            stats = herd.cache.stats()["disk"]
            assert stats["evictions"] > 0
            assert stats["size_bytes"] <= 150_000
            return [first.cache_tier]

    assert asyncio.run(go()) == [None]  # the oldest filler was evicted
    with sqlite3.connect(db) as conn:
        used = (
            conn.execute("PRAGMA page_count").fetchone()[0]
            - conn.execute("PRAGMA freelist_count").fetchone()[0]
        )
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    assert used * page <= 150_000 * 1.1


def test_a_damaged_entry_is_a_miss_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "c.sqlite3"
    herd, _ = cached_herd(echo_model(), plugins=disk(db))
    ask(herd, ["a", "b"])
    with sqlite3.connect(db) as conn:
        for key, value in conn.execute("SELECT key, value FROM entries").fetchall():
            flipped = value.replace(b"answer to", b"answer TO")  # bit rot in the content
            conn.execute("UPDATE entries SET value = ? WHERE key = ?", (flipped, key))
    herd2, model2 = cached_herd(echo_model(), plugins=disk(db))
    assert ask(herd2, ["a", "b", "a"]) == [
        ("answer to a", None),
        ("answer to b", None),
        ("answer to a", "disk"),
    ]
    assert len(model2.history) == 2
    warnings = disk_warnings(caplog)
    assert len(warnings) == 1 and "cannot be trusted (signature mismatch" in warnings[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    db = tmp_path / "c.sqlite3"
    model = MockModel()
    model.enqueue(*[lambda r: f"answer to {r.messages[-1].content} " + "y" * 3000] * 500)
    herd, _ = cached_herd(model, plugins=disk(db))
    ask(herd, [f"q{i}" for i in range(40)])
    size = db.stat().st_size
    assert size > 50_000
    with open(db, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        else:
            f.write(os.urandom(size))
    herd2, _model2 = cached_herd(MockModel(default="fresh"), plugins=disk(db))
    # every answer is right: either the intact old entry, or a fresh call
    results = ask(herd2, [f"q{i}" for i in range(40)] + ["q0"])
    for i, (content, tier) in enumerate(results[:40]):
        assert content == "fresh" or (tier == "disk" and content.startswith(f"answer to q{i} "))
    assert results[-1][1] == "disk"  # the fresh file works
    assert len(disk_warnings(caplog)) == 1
    assert "moved it to" in disk_warnings(caplog)[0]
    assert list(tmp_path.glob("c.sqlite3.corrupt-*"))


def test_full_disk_skips_stores_and_answers_right(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes every write past 300 kB fail with EFBIG: a full disk for one file
    db = tmp_path / "full.sqlite3"
    script = textwrap.dedent(f"""
        import asyncio, json, logging, resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        warnings = []
        class H(logging.Handler):
            def emit(self, record):
                if record.levelno >= logging.WARNING:
                    warnings.append(record.getMessage())
        logging.getLogger("modelherd").addHandler(H())
        from modelherd.testing import MockModel, make_herd
        from modelherd.plugins.cache import disk as cache_disk
        model = MockModel()
        model.enqueue(*[lambda r: r.messages[-1].content + " " + "z" * 5000] * 400)
        herd = make_herd({{"mock": model}}, plugins=(cache_disk,),
                         config={{"plugins": {{"cache_disk": {{"path": {str(db)!r}}}}}}})
        async def main():
            wrong = 0
            async with herd:
                tier = [t for t in herd.cache.tiers if t.name == "disk"][0]
                # 120 answers of 5 kB overflow the 300 kB limit; then the latest ten again
                for i in [*range(120), *range(110, 120)]:
                    if i == 110:
                        await tier.flush()  # write-behind: the file is full by now
                    r = await herd.chat("mock", f"p{{i}}")
                    wrong += not r.content.startswith(f"p{{i}} ")
                await tier.flush()
                stats = herd.cache.stats()["disk"]
            print(json.dumps({{"wrong": wrong, "warnings": warnings, "errors": stats["errors"],
                               "hits": stats["hits"], "upstream": len(model.history)}}))
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["wrong"] == 0
    assert result["errors"] > 0  # the failed stores are counted (herd.cache.errors)
    # after the failures made room, the latest answers were stored and served from disk
    assert result["hits"] > 0 and result["upstream"] < 130
    full = [w for w in result["warnings"] if "could not store" in w]
    assert len(full) == 1, result["warnings"]
    assert "free disk space or lower max_bytes" in full[0]


def test_an_unusable_path_steps_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    herd, _model = cached_herd(plugins=disk(blocker / "c.sqlite3"))
    assert ask(herd, ["a", "a"]) == [("ok", None), ("ok", None)]
    warnings = disk_warnings(caplog)
    assert len(warnings) == 1 and "steps aside" in warnings[0]


def test_encrypted_at_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "enc.sqlite3"
    secret_answer = "the launch code is 0000"
    monkeypatch.setenv("HERD_CACHE_KEY", KEY)
    herd, _ = cached_herd(
        MockModel(default=secret_answer), plugins=disk(db, encrypt_key_env="HERD_CACHE_KEY")
    )
    herd.env = dict(os.environ)
    assert ask(herd, ["q", "q"]) == [(secret_answer, None), (secret_answer, "disk")]
    raw = b"".join(Path(f"{db}{s}").read_bytes() for s in ("", "-wal") if Path(f"{db}{s}").exists())
    assert b"launch code" not in raw and KEY.encode() not in raw
    # a reader with another key cannot use the entry: a miss, never garbage
    herd2, _model2 = cached_herd(
        MockModel(default="fresh"), plugins=disk(db, encrypt_key_env="HERD_CACHE_KEY")
    )
    herd2.env = {"HERD_CACHE_KEY": OTHER_KEY}
    assert ask(herd2, ["q"]) == [("fresh", None)]
    assert any("cannot decrypt" in w for w in disk_warnings(caplog))
    # and a reader without encryption refuses encrypted values
    herd3, _ = cached_herd(MockModel(default="plain"), plugins=disk(db))
    assert ask(herd3, ["q"]) == [("plain", None)]
    assert any("no encrypt_key_env is configured" in w for w in disk_warnings(caplog))


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {},
            r"\[plugins.cache_disk\] encrypt_key_env: the environment variable HERD_CACHE_KEY "
            r"is not set — create a key with",
        ),
        (
            {"HERD_CACHE_KEY": "short-secret-value"},
            r"key #1 in HERD_CACHE_KEY is not a valid Fernet key",
        ),
    ],
)
def test_encryption_config_errors(tmp_path: Path, env: dict[str, str], match: str) -> None:
    herd, _ = cached_herd(plugins=disk(tmp_path / "e.sqlite3", encrypt_key_env="HERD_CACHE_KEY"))
    herd.env = env
    # a config error, strict or not: the tier is never quietly dropped
    with pytest.raises(ConfigError, match=match) as info:
        asyncio.run(herd.start())
    assert "short-secret-value" not in str(info.value)


def test_missing_cryptography_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # import -> ImportError
    herd, _ = cached_herd(plugins=disk(tmp_path / "e.sqlite3", encrypt_key_env="HERD_CACHE_KEY"))
    herd.env = {"HERD_CACHE_KEY": KEY}
    herd.strict = True
    with pytest.raises(
        PluginLoadError,
        match=r"cache encryption needs the 'cryptography' "
        r'package — install it with: pip install "modelherd\[crypto\]"',
    ):
        asyncio.run(herd.start())


def test_concurrent_writers_in_three_processes(tmp_path: Path) -> None:
    db = tmp_path / "busy.sqlite3"
    script = textwrap.dedent(f"""
        import asyncio, sys
        from modelherd.testing import MockModel, make_herd
        from modelherd.plugins.cache import disk as cache_disk
        who = sys.argv[1]
        model = MockModel()
        model.enqueue(*[lambda r: "answer to " + r.messages[-1].content] * 1000)
        herd = make_herd({{"mock": model}}, plugins=(cache_disk,),
                         config={{"plugins": {{"cache_disk": {{"path": {str(db)!r}}}}}}})
        async def main():
            async with herd:
                # a barrier: all three processes write at the same time
                pathlib.Path({str(tmp_path)!r}, "ready-" + who).touch()
                while not pathlib.Path({str(tmp_path)!r}, "go").exists():
                    await asyncio.sleep(0.005)
                await asyncio.gather(*(herd.chat("mock", f"{{who}}-{{i}}") for i in range(150)))
        asyncio.run(main())
    """).replace("import asyncio, sys", "import asyncio, pathlib, sys")
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("p1", "p2")]
    herd, _ = cached_herd(echo_model(), plugins=disk(db))

    async def go() -> list[tuple[str, str | None]]:
        async with herd:
            deadline = time.monotonic() + 60
            while not all((tmp_path / f"ready-{n}").exists() for n in ("p1", "p2")):
                assert time.monotonic() < deadline, "the writer processes did not start"
                await asyncio.sleep(0.005)
            (tmp_path / "go").touch()
            out = await asyncio.gather(*(herd.chat("mock", f"main-{i}") for i in range(150)))
            return [(r.content, r.cache_tier) for r in out]

    mine = asyncio.run(go())
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    assert mine == [(f"answer to main-{i}", None) for i in range(150)]
    reader, _model = cached_herd(MockModel(default="not cached"), plugins=disk(db))
    prompts = [f"{who}-{i}" for who in ("p1", "p2", "main") for i in range(150)]
    results = ask(reader, prompts)
    for prompt, (content, tier) in zip(prompts, results, strict=True):
        # every entry that made it is the right one; a store skipped under the lock is a miss
        assert content == f"answer to {prompt}" if tier == "disk" else content == "not cached"
    assert sum(tier == "disk" for _, tier in results) > 400
