"""`herd cache stats` and `herd cache clear [--tier T]` through the real `herd` entry point."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cache_helpers import cached_herd
from modelherd.cli import main


def fill(db: Path, prompts: list[str]) -> None:
    herd, _ = cached_herd(plugins={"cache_disk": {"path": str(db)}})

    async def go() -> None:
        async with herd:
            for p in prompts:
                await herd.chat("mock", p)

    asyncio.run(go())


def write_config(tmp_path: Path, db: Path) -> Path:
    cfg = tmp_path / "plugins.toml"
    cfg.write_text(f'[plugins.cache_disk]\npath = "{db}"\n', encoding="utf-8")
    return cfg


def test_stats_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "c.sqlite3"
    fill(db, ["a", "b", "c"])
    cfg = write_config(tmp_path, db)

    main(["--config", str(cfg), "cache", "stats", "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["disk"]["entries"] == 3 and stats["disk"]["path"] == str(db)
    assert stats["memory"]["entries"] == 0

    main(["--config", str(cfg), "cache", "clear", "--tier", "disk", "--json"])
    assert json.loads(capsys.readouterr().out) == {"disk": 3}

    main(["--config", str(cfg), "cache", "stats"])
    out = capsys.readouterr().out
    assert "disk" in out and "memory" in out and str(db.name) in out


def test_clear_unknown_tier_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, tmp_path / "c.sqlite3")
    with pytest.raises(SystemExit) as info:
        main(["--config", str(cfg), "cache", "clear", "--tier", "redis"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: no cache tier named 'redis' is on — tiers on: memory, disk "
        "(configure others in [plugins.cache_disk] / [plugins.cache_redis])"
    )


def test_stats_shows_what_a_previous_herd_left_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "c.sqlite3"
    fill(db, ["a", "b"])  # another Herd, now closed, wrote these
    cfg = write_config(tmp_path, db)
    monkeypatch.setenv("COLUMNS", "80")

    main(["--config", str(cfg), "cache", "stats", "--json"])
    disk = json.loads(capsys.readouterr().out)["disk"]
    assert disk["entries"] == 2 and disk["size_bytes"] > 0
    assert disk["last_used_oldest"] <= disk["last_used_newest"]
    assert disk["expires_next"] > disk["last_used_newest"]  # the 7-day default ttl

    main(["--config", str(cfg), "cache", "stats"])
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    cells = [c.strip() for c in rows["disk"].strip("│ ").split("│")]
    assert cells[0] == "disk" and cells[1] == "2", out
    assert cells[3].endswith(" ago") and cells[4].startswith("next in "), out
    assert [c.strip() for c in rows["memory"].strip("│ ").split("│")][1] == "0", out
    # per-process counters are not shown as if they were the tier's: no hits/misses columns
    assert "hits" not in out and "misses" not in out and "per process" in out
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
