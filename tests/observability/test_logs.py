"""The call log: what each call leaves in SQLite, the file's safety and bounds, and
`herd logs` / `herd usage` as a user runs them."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from modelherd import Agent, ProviderError
from modelherd.plugins import cost
from modelherd.plugins.cache import memory
from modelherd.plugins.observability import logs
from modelherd.plugins.observability.logs import log_writer
from modelherd.plugins.observability.logs.schema import V1, VERSION
from modelherd.plugins.observability.logs.store import Filters, LogFileError, LogStore
from modelherd.testing import MockModel, make_herd
from modelherd.types import ChatRequest

pytestmark = pytest.mark.anyio

PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}


def _herd(path: Path, models: dict[str, MockModel] | None = None, **settings: Any) -> Any:
    models = models or {"mock": MockModel(default="the answer")}
    tables = {a: {"provider": "mock", "model": "mock-1", "price": PRICE} for a in models}
    if "primary" in tables:
        tables["primary"]["fallbacks"] = ["mock"]
    return make_herd(
        models,
        config={
            "herd": {"retries": 0},
            "models": tables,
            "plugins": {"logs": {"path": str(path), **settings}},
        },
        plugins=(cost, memory, logs),
        fallbacks={"primary": ["mock"]},
    )


def _rows(herd: Any, **filters: Any) -> list[dict[str, Any]]:
    writer = log_writer(herd)
    assert writer is not None and writer.flush()
    return writer.store.query(Filters(**filters), 100)


async def test_ok_cache_hit_error_and_fallback_are_all_recorded(tmp_path: Path) -> None:
    primary = MockModel()
    primary.enqueue(ProviderError("primary is down"))
    broken = MockModel()
    broken.enqueue(ProviderError("broken for good"))
    herd = _herd(
        tmp_path / "logs.db",
        {"mock": MockModel(default="the answer"), "primary": primary, "broken": broken},
    )
    async with herd:
        await herd.chat("mock", "what is it", tenant=None, agent="bot")
        await herd.chat("mock", "what is it", agent="bot")  # a memory-cache hit
        await herd.chat("primary", "fall back please", cache="no-store")
        with pytest.raises(ProviderError):
            await herd.chat("broken", "fail")
        rows = _rows(herd)
    by_id = sorted(rows, key=lambda r: r["id"])
    first, hit, fallback, error = by_id
    assert (first["outcome"], first["cache_tier"], first["agent"]) == ("ok", None, "bot")
    assert first["cost"] == pytest.approx((3 * 1.0 + 2 * 2.0) / 1e6)  # 3 words in, 2 out
    assert hit["cache_tier"] == "memory"
    assert hit["cost"] == 0.0
    assert hit["saved"] == pytest.approx(first["cost"])
    assert fallback["alias"] == "primary"
    assert fallback["answered_by"] == "mock"
    assert fallback["fallback_from"] == "primary"
    assert error["outcome"] == "error"
    assert error["error_type"] == "ProviderError"
    assert error["latency_s"] is not None and error["latency_s"] >= 0
    with sqlite3.connect(tmp_path / "logs.db") as db:
        assert db.execute("SELECT count(*) FROM content").fetchone()[0] == 0  # metadata only
        assert db.execute("SELECT error FROM calls WHERE outcome='error'").fetchone() == (
            "broken for good",
        )


async def test_content_is_kept_only_when_asked_and_searchable(tmp_path: Path) -> None:
    herd = _herd(tmp_path / "logs.db", content=True)
    async with herd:
        await herd.chat("mock", "tell me about zebras")
        await herd.chat("mock", "and giraffes", cache="no-store")
        found = _rows(herd, text="zebras")
        none = _rows(herd, text='"unbalanced OR')  # user text is a phrase, never FTS syntax
        writer = log_writer(herd)
        assert writer is not None
        full = writer.store.get(found[0]["id"])
    assert len(found) == 1
    assert none == []
    assert full is not None
    assert full["messages"] == [{"role": "user", "content": "tell me about zebras"}]
    assert full["answer"] == "the answer"


async def test_secrets_from_the_environment_are_never_stored(tmp_path: Path) -> None:
    secret = "sk-test-ABCDEFGHIJKLMNOP1234"
    model = MockModel()
    model.enqueue(f"echo {secret}", ProviderError(f"bad key {secret}"))
    herd = _herd(tmp_path / "logs.db", {"mock": model}, content=True)
    herd.env = {"OPENAI_API_KEY": secret, "HOME": "/home/someone-long-enough"}
    async with herd:
        await herd.chat("mock", f"my key is {secret}")
        with pytest.raises(ProviderError):
            await herd.chat("mock", "again", cache="no-store")
        _rows(herd)
    raw = (tmp_path / "logs.db").read_bytes()
    wal = tmp_path / "logs.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert secret.encode() not in raw
    with sqlite3.connect(tmp_path / "logs.db") as db:
        messages, answer = db.execute("SELECT messages, answer FROM content").fetchone()
        assert "my key is [redacted]" in messages
        assert answer == "echo [redacted]"
        assert db.execute("SELECT error FROM calls WHERE outcome='error'").fetchone() == (
            "bad key [redacted]",
        )


async def test_file_and_its_wal_are_private(tmp_path: Path) -> None:
    herd = _herd(tmp_path / "data" / "logs.db")
    async with herd:
        await herd.chat("mock", "hi")
        _rows(herd)
        for name in ("logs.db", "logs.db-wal"):
            mode = stat.S_IMODE((tmp_path / "data" / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


async def test_tenant_filter_and_run_ids_from_agent_runs(tmp_path: Path) -> None:
    class Pair(Agent):
        name = "pair"

        async def run(self, **kwargs: Any) -> Any:
            await self.herd.chat("mock", "one", agent=self.name, cache="no-store")
            await self.herd.chat("mock", "two", agent=self.name, cache="no-store")

    herd = _herd(tmp_path / "logs.db")
    async with herd:
        await Pair(herd).run()
        await Pair(herd).run()
        rows = _rows(herd)
        runs = {r["run_id"] for r in rows}
        assert len(runs) == 2 and None not in runs
        one = next(iter(runs))
        assert len(_rows(herd, run_id=one)) == 2
        assert _rows(herd, tenant="nobody") == []


def test_migrates_a_version_1_file_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO calls (ts, outcome, alias, provider, model, input_tokens, "
            "output_tokens, latency_s) VALUES (?, 'ok', 'old', 'ollama', 'llama', 5, 7, 0.5)",
            (time.time(),),
        )
    store = LogStore(path, create=False)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        (row,) = store.query(Filters(), 10)
        assert (row["alias"], row["input_tokens"], row["cost"], row["saved"]) == ("old", 5, None, 0)
        assert store.usage("model", Filters())[0]["calls"] == 1
    finally:
        store.close()


def test_refuses_files_it_does_not_understand(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {VERSION + 1}")
    with pytest.raises(LogFileError) as info:
        LogStore(newer)
    assert str(info.value) == (
        f"{newer}: it has schema version {VERSION + 1}, newer than this modelherd's {VERSION} — "
        f"upgrade modelherd, or point [plugins.logs] path at another file"
    )
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (x)")
    with pytest.raises(LogFileError, match="it is an SQLite file but not a modelherd call log"):
        LogStore(other)


def _fill(store: LogStore, count: int, ts: float, content: str | None = None) -> None:
    from modelherd.plugins.observability.logs.store import COLUMNS

    row = {c: None for c in COLUMNS} | {"ts": ts, "outcome": "ok", "alias": "a", "saved": 0.0}
    row |= {"input_tokens": 1, "output_tokens": 1, "cache_read_tokens": 0, "stream": 0}
    values = tuple(row[c] for c in COLUMNS)
    store.append((values, content, content) for _ in range(count))


def test_retention_deletes_old_rows(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    now = time.time()
    _fill(store, 50, now - 40 * 86400)
    _fill(store, 20, now)
    assert store.prune(retention_s=30 * 86400, max_bytes=1 << 30, now=now) == 50
    assert len(store.query(Filters(), 1000)) == 20
    store.close()


def test_metadata_rows_are_inserted_in_order_across_multi_row_statements(
    tmp_path: Path,
) -> None:
    """append_metadata packs many rows into each INSERT: every row lands, in order,
    with each column in its place, whatever the batch size."""
    from modelherd.plugins.observability.logs.store import COLUMNS

    store = LogStore(tmp_path / "logs.db")
    base = {c: None for c in COLUMNS} | {"outcome": "ok", "saved": 0.0, "stream": 0}
    base |= {"input_tokens": 1, "output_tokens": 2, "cache_read_tokens": 0}
    rows = [
        tuple(
            (base | {"ts": 1000.0 + i, "alias": f"m{i}", "tenant": f"t{i % 3}"})[c] for c in COLUMNS
        )
        for i in range(457)  # two full statements and a shorter one
    ]
    assert store.append_metadata(rows) == 457
    assert store.append_metadata(rows[:1]) == 1
    found = store.query(Filters(), 1000)
    assert len(found) == 458
    oldest_first = sorted(found, key=lambda r: r["id"])
    assert [r["alias"] for r in oldest_first[:457]] == [f"m{i}" for i in range(457)]
    assert [r["ts"] for r in oldest_first[:3]] == [1000.0, 1001.0, 1002.0]
    assert oldest_first[5]["tenant"] == "t2" and oldest_first[5]["output_tokens"] == 2
    assert oldest_first[-1]["alias"] == "m0"
    store.close()


def test_size_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    store = LogStore(path)
    limit = 1024 * 1024
    blob = "x" * 2000
    sizes = []
    for _ in range(40):
        _fill(store, 50, time.time(), content=blob)  # ~8 MB written in all
        store.prune(retention_s=86400, max_bytes=limit)
        assert store.used_bytes() <= limit
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(path.stat().st_size)
    # the file itself stays near the bound: pages are given back, not just freed
    assert max(sizes) <= limit * 1.25, sizes
    assert store.query(Filters(), 1)[0]["id"] == 2000  # the oldest went, the newest stayed
    assert len(store.query(Filters(), 5000)) < 2000
    store.close()


def test_a_full_queue_drops_instead_of_waiting(tmp_path: Path) -> None:
    from modelherd.plugins.observability.logs.writer import LogWriter, Redactor

    store = LogStore(tmp_path / "logs.db")
    writer = LogWriter(
        store, content=False, retention_s=1e9, max_bytes=1 << 30, queue_max=100, redact=Redactor([])
    )
    blocker = sqlite3.connect(tmp_path / "logs.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer waits on the lock: the queue fills
    try:
        started = time.perf_counter()
        request = ChatRequest(alias="a", provider="p", model="m", messages=[])
        for _ in range(500):
            writer.put((0.0, None, request, None, ProviderError("x"), None, None))
        elapsed = time.perf_counter() - started
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert writer.dropped >= 300
    assert elapsed < 0.5  # the call path never waited for the disk
    writer.close()


# ---- the CLI, run as a user runs it ------------------------------------------


def _herd_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HERD_CONFIG": str(cwd / "plugins.toml")}
    return subprocess.run(
        [sys.executable, "-m", "modelherd.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.fixture
def filled_log(tmp_path: Path) -> Path:
    path = tmp_path / "logs.db"
    (tmp_path / "plugins.toml").write_text(f'[plugins.logs]\npath = "{path}"\n')
    store = LogStore(path)
    from modelherd.plugins.observability.logs.store import COLUMNS

    now = time.time()
    rows = []
    for index in range(6):
        row = dict.fromkeys(COLUMNS) | {
            "ts": now - index,
            "outcome": "error" if index == 0 else "ok",
            "alias": "fast" if index % 2 else "slow",
            "provider": "openai",
            "tenant": "alice" if index < 3 else "bob",
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_tokens": 0,
            "latency_s": 0.1 * (index + 1),
            "cost": None if index == 0 else 0.001,
            "currency": "USD",
            "saved": 0.0,
            "stream": 0,
            "error_type": "ProviderError" if index == 0 else None,
        }
        rows.append((tuple(row[c] for c in COLUMNS), None, None))
    store.append(rows)
    store.close()
    return tmp_path


def test_herd_logs_lists_filters_and_shows(filled_log: Path) -> None:
    listed = _herd_cli("logs", "-n", "3", "--json", cwd=filled_log)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [6, 5, 4]
    errors = json.loads(_herd_cli("logs", "--errors", "--json", cwd=filled_log).stdout)
    assert [r["error_type"] for r in errors] == ["ProviderError"]
    bob = json.loads(_herd_cli("logs", "--tenant", "bob", "--json", cwd=filled_log).stdout)
    assert {r["tenant"] for r in bob} == {"bob"} and len(bob) == 3
    table = _herd_cli("logs", "--model", "fast", cwd=filled_log)
    assert table.returncode == 0 and "fast" in table.stdout and "slow" not in table.stdout
    shown = _herd_cli("logs", "show", "2", cwd=filled_log)
    assert shown.returncode == 0
    assert "prompt and answer not stored" in shown.stdout
    missing = _herd_cli("logs", "show", "99", cwd=filled_log)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "error: no call with id 99 in the log — list ids with `herd logs`"
    )


def test_herd_usage_groups_as_json_and_csv(filled_log: Path) -> None:
    result = _herd_cli("usage", "--by", "tenant", "--json", cwd=filled_log)
    assert result.returncode == 0, result.stderr
    alice, bob = json.loads(result.stdout)
    assert alice["tenant"] == "alice" and alice["calls"] == 3
    assert alice["errors"] == 1 and alice["error_rate"] == pytest.approx(1 / 3)
    assert alice["cost"] == pytest.approx(0.002) and alice["unpriced_calls"] == 0
    assert alice["p50_s"] == pytest.approx(0.2) and alice["p95_s"] == pytest.approx(0.3)
    assert bob["input_tokens"] == 30
    csv_out = _herd_cli("usage", "--by", "model", "--csv", cwd=filled_log).stdout.splitlines()
    assert csv_out[0].startswith("model,calls,input_tokens,output_tokens,cost")
    assert len(csv_out) == 3
    table = _herd_cli("usage", cwd=filled_log)
    assert table.returncode == 0 and "fast" in table.stdout


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text(f'[plugins.logs]\npath = "{tmp_path}/none.db"\n')
    missing = _herd_cli("logs", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"error: no call log at {tmp_path}/none.db yet — it is written once a call is made "
        f"with the logs plugin on (see docs/logs.md)"
    )
    bad = _herd_cli("logs", "--since", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2
    assert (
        "'yesterday' is neither a span (30m, 2h, 7d, 1w) nor an ISO date (2026-12-01)" in bad.stderr
    )
    (tmp_path / "plugins.toml").write_text("[plugins.logs]\ncontent = 'maybe'\n")
    typo = _herd_cli("logs", cwd=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr.strip() == (
        f"error: {tmp_path}/plugins.toml: [plugins.logs] content: Input should be a valid "
        f"boolean, unable to interpret input — fix that value (see docs/logs.md)"
    )


async def test_one_writer_feeds_the_audit_jsonl_too(tmp_path: Path) -> None:
    from modelherd.plugins.observability import audit

    models = {"mock": MockModel(default="the answer"), "broken": MockModel()}
    models["broken"].enqueue(ProviderError("down"))
    tables = {a: {"provider": "mock", "model": "mock-1", "price": PRICE} for a in models}
    herd = make_herd(
        models,
        config={
            "herd": {"retries": 0},
            "models": tables,
            "plugins": {
                "logs": {"path": str(tmp_path / "logs.db")},
                "audit": {"path": str(tmp_path / "audit.jsonl"), "include_content": True},
            },
        },
        # the call log registered first: its startup still runs after audit's (trylast)
        plugins=(cost, logs, audit),
    )
    async with herd:
        await herd.chat("mock", "question", agent="bot")
        with pytest.raises(ProviderError):
            await herd.chat("broken", "fail")
        assert audit.audit_log(herd) is None  # the audit hooks are off the call path
        writer = log_writer(herd)
        assert writer is not None and writer.flush()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    ok, error = lines
    assert ok["outcome"] == "ok" and ok["agent"] == "bot"
    assert (ok["model"], ok["response_model"], ok["answered_by"]) == ("mock-1", "mock-1", "mock")
    assert ok["cost"] == pytest.approx((1 * 1.0 + 2 * 2.0) / 1e6)
    assert ok["messages"] == [{"role": "user", "content": "question"}]
    assert ok["answer"] == "the answer"
    assert ok["time"].endswith("+00:00")
    assert (error["outcome"], error["error_type"]) == ("error", "ProviderError")
    with sqlite3.connect(tmp_path / "logs.db") as db:
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 2
        # the audit wanted content; the call log was not asked to keep it
        assert db.execute("SELECT count(*) FROM content").fetchone()[0] == 0


async def test_a_budget_refusal_is_logged_as_an_error(tmp_path: Path) -> None:
    from modelherd.errors import BudgetExceededError
    from modelherd.plugins.resources.tenants import budgets

    price = {"input_per_mtok": 0, "output_per_mtok": 100_000}  # 0.10 a call
    herd = make_herd(
        {"mock": MockModel()},
        config={
            "models": {"mock": {"provider": "mock", "model": "mock-1", "price": price}},
            "plugins": {
                "logs": {"path": str(tmp_path / "logs.db")},
                "budgets": {"tenants": {"t": {"daily": 0.1}}},
            },
        },
        plugins=(cost, budgets, logs),
    )
    async with herd:
        await herd.chat("mock", "hi", tenant="t")
        with pytest.raises(BudgetExceededError):
            await herd.chat("mock", "hi again", tenant="t")
        refused, ok = _rows(herd, tenant="t")
    assert ok["outcome"] == "ok" and ok["cost"] == pytest.approx(0.1)
    assert (refused["outcome"], refused["error_type"]) == ("error", "BudgetExceededError")
    assert refused["latency_s"] is not None  # timed from the call's start in the pipeline


def _open_when_all_ready(path: str, barrier: Any, results: Any) -> None:
    from modelherd.plugins.observability.logs.store import open_db

    barrier.wait()  # every process opens the new file at the same moment
    try:
        db = open_db(Path(path), create=True)
        results.put(db.execute("PRAGMA user_version").fetchone()[0])
    except Exception as exc:
        results.put(repr(exc))


def test_processes_creating_one_new_log_at_once_all_open_it(tmp_path: Path) -> None:
    # herd serve --workers 2 (or replicas on one disk) open a new logs.db together: each
    # used to read version 0 and all but one failed on "table calls already exists"
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        barrier, results = context.Barrier(4), context.Queue()
        path = str(tmp_path / f"logs{round_}.db")
        procs = [
            context.Process(target=_open_when_all_ready, args=(path, barrier, results))
            for _ in range(4)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [results.get(timeout=5) for _ in procs] == [VERSION] * 4


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process that has written the new file's header and holds its write lock
    (the moment the race hit: a second opener saw a non-empty file, still in rollback
    mode, and asked for WAL)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA auto_vacuum = INCREMENTAL")
    holder.execute("PRAGMA user_version = 0")  # writes the header, no table yet
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_opening_a_new_log_waits_while_another_process_holds_its_lock(tmp_path: Path) -> None:
    # SQLite runs no busy handler for the switch to WAL: with another connection holding
    # the write lock it said "database is locked" at once (1 open in ~240 with four
    # processes opening one new file), where it should wait for the lock like any write
    import threading

    path = tmp_path / "logs.db"
    holder = _hold_write_lock(path)
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))
    release.start()
    started = time.monotonic()
    try:
        store = LogStore(path)
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - started >= 0.25  # it waited for the lock, then opened
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
    store.close()


def test_a_log_locked_past_the_wait_is_one_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelherd.plugins.observability.logs import store as store_module

    monkeypatch.setattr(store_module, "_WAL_SWITCH_WAIT_S", 0.2)
    path = tmp_path / "logs.db"
    holder = _hold_write_lock(path)
    try:
        with pytest.raises(LogFileError) as caught:
            LogStore(path)
    finally:
        holder.close()
    assert str(caught.value) == (
        f"{path}: cannot use it as a call log (database is locked) — move it away or set "
        f"[plugins.logs] path to another file"
    )


def test_a_new_log_uses_incremental_auto_vacuum(tmp_path: Path) -> None:
    # pruning gives pages back only in this mode, and it can be chosen only before
    # the first write (switching to WAL is one)
    store = LogStore(tmp_path / "logs.db")
    assert store.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    store.close()


def test_the_direct_row_of_an_answered_call_matches_its_fields() -> None:
    """ok_row (the writer's fast path) and fields() (sinks, errors) give the same columns."""
    from modelherd.plugins.observability.logs.store import COLUMNS
    from modelherd.plugins.observability.logs.writer import fields, ok_row
    from modelherd.types import ChatResponse, Cost, Message, Usage

    request = ChatRequest(
        alias="a",
        provider="mock",
        model="m",
        messages=[Message(role="user", content="hi")],
        tenant="t",
        agent="g",
        stream=True,
    )
    priced = Usage(input_tokens=3, output_tokens=4, cache_read_tokens=1, cost=Cost(amount=0.5))
    responses = [
        ChatResponse(content="x", model="m2", provider="mock", alias="b", usage=priced),
        ChatResponse(
            content="x",
            model="m",
            provider="mock",
            cache_tier="memory",
            fallback_from="z",
            attempts=2,
            request_id="r1",
            finish_reason="length",
            latency_s=0.25,
        ),
    ]
    for response in responses:
        event = (123.0, "run-1", request, response, None, True, None)
        assert ok_row(event) == tuple(fields(event).get(name) for name in COLUMNS)
