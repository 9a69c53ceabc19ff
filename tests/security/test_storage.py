"""Attacks on data at rest: two writers on one portfolio, kill -9 at the worst moment,
a full disk, bad text in the audit log, a planted status folder, answers and schemas
nested deep enough to blow the stack. The writers are real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from modelherd.agents.answers import ParseError, parse_answer
from modelherd.agents.portfolio import load_portfolio, portfolio_path, portfolio_round
from modelherd.errors import BadRequestError
from modelherd.plugins.observability import audit
from modelherd.plugins.observability.alerts import status
from modelherd.testing import MockModel, make_herd

WRITER = """\
import json, os, sys, time
from pathlib import Path
from modelherd.agents import storage
from modelherd.agents.portfolio import portfolio_round
data, journal, symbol, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
{setup}
for n in range(rounds):
    with portfolio_round("shared", data, 10_000.0, journal) as book:
        fill = book.portfolio.buy(symbol, 10.0, 100.0, reason=f"{{symbol}} {{n}}")
        time.sleep(0.005)  # widen the window another writer would race into
        book.record({{"agent": symbol, "fill": fill.model_dump(mode="json")}})
print("done", flush=True)
"""


def writer(tmp_path: Path, symbol: str, rounds: int, setup: str = "") -> subprocess.Popen[str]:
    script = WRITER.format(setup=textwrap.dedent(setup))
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "data"),
            str(journal_of(tmp_path)),
            symbol,
            str(rounds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def journal_of(tmp_path: Path) -> Path:
    return tmp_path / "data" / "journal" / "trading.jsonl"


def consistent(tmp_path: Path) -> tuple[int, int]:
    """(fills in the portfolio, fill lines in the journal), after checking that every
    journal line parses, no id repeats and no temp file is left."""
    data = str(tmp_path / "data")
    with portfolio_round("shared", data, 10_000.0, journal_of(tmp_path)) as book:
        book.discard()  # opening the round delivers what a killed writer committed
    portfolio = load_portfolio("shared", data)
    raw = journal_of(tmp_path).read_bytes() if journal_of(tmp_path).exists() else b""
    lines = [json.loads(line) for line in raw.splitlines()]  # every line parses
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)), "a journal line was written twice"
    assert list(portfolio_path("shared", data).parent.glob("*.tmp")) == []
    assert portfolio.outbox is None
    journal_fills = [line["fill"] for line in lines if line.get("fill")]
    assert [f["reason"] for f in journal_fills] == [f.reason for f in portfolio.fills]
    return len(portfolio.fills), len(journal_fills)


def test_two_processes_on_one_portfolio_lose_no_fill(tmp_path: Path) -> None:
    procs = [writer(tmp_path, symbol, 10) for symbol in ("AAA", "BBB")]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert consistent(tmp_path) == (20, 20)
    portfolio = load_portfolio("shared", str(tmp_path / "data"))
    assert portfolio.cash == pytest.approx(10_000.0 - 20 * 10.0)
    assert {s: p.qty for s, p in portfolio.positions.items()} == pytest.approx(
        {"AAA": 1.0, "BBB": 1.0}
    )


@pytest.mark.parametrize(
    ("crash", "committed"),
    [
        (
            # killed right after the commit point, before the journal line is written
            """
        def crash(self, lines):
            os.kill(os.getpid(), 9)
        storage.Journal.append_lines = crash
        """,
            True,
        ),
        (
            # killed half-way through writing the journal line
            """
        def crash(self, lines):
            data = b"".join(lines)
            with open(self.path, "ab") as fh:
                fh.write(data[: len(data) // 2])
            os.kill(os.getpid(), 9)
        storage.Journal.append_lines = crash
        """,
            True,
        ),
        (
            # killed inside write_json, with its temp file on disk and not renamed
            """
        def crash(*args, **kwargs):
            raise SystemExit(os.kill(os.getpid(), 9))
        storage.os.replace = crash
        """,
            False,
        ),
    ],
    ids=["after-commit", "half-a-line", "temp-file"],
)
def test_kill_9_at_the_worst_moment_leaves_them_consistent(
    crash: str, committed: bool, tmp_path: Path
) -> None:
    first = writer(tmp_path, "AAA", 2)
    assert first.wait(60) == 0
    killed = writer(tmp_path, "BBB", 1, setup=crash)
    assert killed.wait(60) == -signal.SIGKILL
    fills, lines = consistent(tmp_path)
    # the killed round either committed (and its line is delivered, once) or never did
    assert (fills, lines) == ((3, 3) if committed else (2, 2))
    assert writer(tmp_path, "CCC", 1).wait(60) == 0
    assert consistent(tmp_path)[0] == fills + 1


def test_kill_9_at_random_moments_leaves_them_consistent(tmp_path: Path) -> None:
    for delay in (0.15, 0.3, 0.45):
        proc = writer(tmp_path, "AAA", 10_000)
        time.sleep(delay + 0.4)  # interpreter start, then some rounds
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        fills, lines = consistent(tmp_path)
        assert fills == lines


def test_files_are_0600_and_folders_0700(tmp_path: Path) -> None:
    assert writer(tmp_path, "AAA", 1).wait(60) == 0
    data = tmp_path / "data"
    for path in (
        portfolio_path("shared", str(data)),
        journal_of(tmp_path),
        portfolio_path("shared", str(data)).with_suffix(".json.lock"),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (data, data / "portfolios", data / "journal"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


FULL_DISK = """\
import os, sys
from pathlib import Path
from modelherd.agents import storage
from modelherd.agents.portfolio import portfolio_round
data = Path(sys.argv[1])
data.mkdir(exist_ok=True)
try:  # fill the disk
    with open(data / "ballast", "wb") as fh:
        while True:
            fh.write(b"x" * 4096)
except OSError:
    pass
try:
    with portfolio_round("p", str(data), 1000.0, data / "journal.jsonl") as book:
        book.portfolio.buy("AAA", 10.0, 1.0, reason="r")
        book.record({"fill": "x" * 10_000})
except storage.StorageError as exc:
    print(type(exc).__name__, exc)
"""


def test_a_full_disk_is_one_clear_line(tmp_path: Path) -> None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("needs bwrap to mount a tiny tmpfs without root")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    done = subprocess.run(
        [
            bwrap,
            "--dev-bind",
            "/",
            "/",
            "--size",
            str(256 * 1024),
            "--tmpfs",
            str(tiny),
            sys.executable,
            "-c",
            FULL_DISK,
            str(tiny / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.startswith("StorageError cannot write ")
    assert done.stdout.rstrip().endswith(
        ": no space left on the disk — free some space or set HERD_DATA_DIR to another disk"
    )
    assert done.stdout.count("\n") == 1


def test_a_file_size_limit_is_one_clear_line(tmp_path: Path) -> None:
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "from pathlib import Path\n"
        "from modelherd.agents import storage\n"
        "try:\n"
        "    storage.write_json(Path(sys.argv[1]), {'x': 'y' * 10_000})\n"
        "except storage.StorageError as exc:\n"
        "    print(exc)\n"
    )
    target = tmp_path / "big.json"
    done = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == (
        f"cannot write {target}: the file would pass the file-size limit (ulimit -f) — raise it "
        "or free space"
    ), done.stderr
    assert list(tmp_path.glob("*.tmp")) == []


# ---- the audit log ---------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    @audit.hookimpl
    def on_metric(self, metric: Any, herd: Any) -> None:
        self.seen.append(metric)


def audited_herd(path: Path, adopted: bool, tmp_path: Path, **settings: Any) -> Any:
    """A herd with the audit log; `adopted`: the call log's writer drives it."""
    from modelherd.plugins import cost
    from modelherd.plugins.observability import logs

    plugins_config: dict[str, Any] = {"audit": {"path": str(path), **settings}}
    if adopted:
        plugins_config["logs"] = {"path": str(tmp_path / "logs.db")}
    return make_herd(
        {"mock": MockModel(default="fine")},
        config={"herd": {"retries": 0}, "plugins": plugins_config},
        plugins=(cost, logs, audit) if adopted else (audit,),
    )


@pytest.mark.parametrize("adopted", [False, True], ids=["own-writer", "call-log-writer"])
def test_lone_surrogates_do_not_kill_the_audit_writer(adopted: bool, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    herd = audited_herd(path, adopted, tmp_path, include_content=True)

    async def main() -> None:
        async with herd:
            for n in range(22):
                bad = "caf\udce9" if n % 2 else "plain"
                await herd.chat("mock", f"prompt {bad}", tenant=bad, agent=f"agent-{bad}")

    anyio.run(main)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 22
    assert lines[1]["tenant"] == "caf?" and lines[0]["tenant"] == "plain"


@pytest.mark.parametrize("adopted", [False, True], ids=["own-writer", "call-log-writer"])
def test_a_failing_audit_log_is_visible_and_can_fail_closed(adopted: bool, tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    herd = audited_herd(Path("/dev/full"), adopted, tmp_path, fail_closed=True)
    metrics = Metrics()
    herd.register_plugin(metrics, name="metrics-capture")

    async def main() -> None:
        async with herd:
            await herd.chat("mock", "first")  # answered; its record cannot be written
            guard = herd.pm.get_plugin(audit.GUARD_NAME)
            assert isinstance(guard, audit.AuditGuard)
            writer = guard.writer
            assert (audit.audit_log(herd) is None) == adopted  # adopted: off the call path
            for _ in range(300):
                if writer.failures:
                    break
                await anyio.sleep(0.01)
            assert writer.failures == 1 and writer.last_error == "No space left on device"
            finding = guard.doctor_findings()[0]
            assert finding["level"] == "error"
            assert finding["message"] == (
                "audit log /dev/full: 1 record(s) could not be written (No space left on device)"
            )
            with pytest.raises(audit.AuditUnavailableError) as refused:
                await herd.chat("mock", "second")
            assert str(refused.value) == (
                "the audit log /dev/full cannot be written (No space left on device) and "
                "[plugins.audit] fail_closed = true: calls are refused until it can — free "
                "space or fix the path"
            )

    anyio.run(main)
    assert [m.value for m in metrics.seen if m.name == "herd.audit.write_failures"] == [1]


# ---- the status folder in the shared tmp ----------------------------------------


@pytest.fixture
def shared_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path stands in for /tmp: a folder where anyone may create entries."""
    monkeypatch.setattr(status, "_shared_roots", lambda: [tmp_path.resolve()])
    return tmp_path


def test_a_planted_status_symlink_is_refused(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    planted = tmp_path / "modelherd-0"
    planted.symlink_to(elsewhere)
    assert status.in_shared_tmp(planted)
    with pytest.raises(PermissionError, match="is a symbolic link in a shared folder"):
        status.write_status(status.status_path(planted), {"x": 1})
    assert list(elsewhere.iterdir()) == []
    # deeper folders are not "in the shared tmp": their parents' owners guard them
    assert not status.in_shared_tmp(tmp_path / "a" / "status")
    (elsewhere / f"status-{os.getpid()}.json").write_text("{}")
    assert status.list_status_files(planted) == []


def test_a_foreign_status_folder_is_refused_and_ours_is_private(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    ours = tmp_path / "modelherd-me"
    ours.mkdir(mode=0o777)
    os.chmod(ours, 0o777)
    status.write_status(status.status_path(ours), {"x": 1})
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700
    assert stat.S_IMODE(status.status_path(ours).stat().st_mode) == 0o600
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    foreign = tmp_path / "modelherd-foreign"
    foreign.mkdir()
    os.chown(foreign, 12345, 12345)
    with pytest.raises(PermissionError, match="belongs to uid 12345, not to you"):
        status.write_status(status.status_path(foreign), {"x": 1})


# ---- answers and schemas nested past the stack -----------------------------------


def test_deeply_nested_answers_are_parse_errors() -> None:
    labels = ["BUY", "SELL", "NOTHING"]
    for text in ("[" * 200_000 + "]" * 200_000, '{"a":' * 5000 + "1" + "}" * 5000):
        with pytest.raises(ParseError):
            parse_answer(text, labels, ("action",))


def test_a_trading_round_survives_a_200kb_nested_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelherd.agents import market_data, risk, swarm, trading

    monkeypatch.setenv("HERD_DATA_DIR", str(tmp_path / "data"))
    model = MockModel(default="[" * 100_000 + "]" * 100_000)
    herd = make_herd(
        {"m": model},
        config={"agents": {"trading": {"models": ["m"], "samples": 1, "risk": False}}},
        plugins=(market_data, swarm, trading, risk),
    )
    report = anyio.run(lambda: herd.agent("trading").run(symbols=["BTC"]))
    assert [d.action for d in report.decisions] == ["NOTHING"]
    herd.close()


def test_a_5000_deep_response_format_is_a_bad_request() -> None:
    herd = make_herd({"m": MockModel(default="{}")})
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(5000):
        schema = {"type": "object", "properties": {"a": schema}}
    with pytest.raises(BadRequestError) as caught:
        anyio.run(
            lambda: herd.chat("m", "hi", response_format={"type": "json_schema", "schema": schema})
        )
    assert str(caught.value) == "response_format is nested more than 64 levels deep — flatten it"
