"""Attacks on the rbi jail (agents/jail.py): each test runs hostile Python in the real
bubblewrap jail and checks, from outside, that the boundary held. A positive control
in each script (something the jail does allow) keeps the tests from passing because
the script never ran. Each run is a bare interpreter (no pandas), a fraction of a
second; the floods and bombs are capped by the jail itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from modelherd.agents import jail
from modelherd.agents.jail import Captured, JailLimits

pytestmark = pytest.mark.skipif(
    not jail.probe().available, reason=f"no jail here: {jail.probe().reason}"
)

PRELUDE = """\
import json, os, sys
def report(value):
    os.write(int(sys.argv[2]), json.dumps(value).encode())
def attempt(fn):
    try:
        return "ok: " + repr(fn())[:80]
    except BaseException as exc:
        return f"blocked: {type(exc).__name__}: {exc}"
"""


def run_jailed(source: str, tmp_path: Path, **limits: Any) -> Captured:
    settings = JailLimits(**{"timeout_s": 10.0, **limits})
    code = PRELUDE + textwrap.dedent(source)
    return jail.run_python({"main.py": code}, "main.py", tmp_path / "work", settings).captured


def reported(run: Captured) -> Any:
    assert run.returncode == 0, run.stderr.decode("utf-8", "replace")[-2000:]
    return json.loads(run.result)


def leftovers(token: str) -> list[int]:
    """Processes anywhere on the host whose command line carries `token`."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(token in part for part in proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
    return found


def test_host_secrets_are_not_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    planted = home / ".env"
    planted.write_text("OPENAI_API_KEY=sk-planted-0123456789abcdef\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0123456789abcdef")
    project = Path(__file__).resolve().parents[2] / "pyproject.toml"
    out = reported(
        run_jailed(
            f"""
            paths = ["/etc/shadow", "/etc/passwd", {str(planted)!r},
                     os.path.expanduser("~/.env"), {str(project)!r}, "/proc/1/environ"]
            read = {{p: attempt(lambda p=p: open(p).read()) for p in paths}}
            report({{"read": read, "env": dict(os.environ),
                     "control": attempt(lambda: open("/job/main.py").read(5))}})
            """,
            tmp_path,
        )
    )
    assert out["control"].startswith("ok"), out
    for path, outcome in out["read"].items():
        if path == "/proc/1/environ":  # the jail's own init: the jail's environment only
            assert "sk-" not in outcome, outcome
            continue
        assert outcome.startswith("blocked: FileNotFoundError"), (path, outcome)
    assert set(out["env"]) <= set(jail.environment()), out["env"]
    assert "sk-" not in json.dumps(out)


def test_nothing_outside_scratch_is_writable(tmp_path: Path) -> None:
    installed = Path(jail.site_paths()[0])
    targets = [
        str(installed / "pwned.py"),  # the installed packages
        str(installed / "backtesting" / "pwned.py"),
        "/job/pwned",
        "/pwned",
        "/dev/pwned",
        "/dev/shm/pwned",
        "/tmp/pwned",
        "/proc/pwned",
        str(Path(jail.interpreter()).parent / "pwned"),
    ]
    out = reported(
        run_jailed(
            f"""
            def write(path):
                with open(path, "w") as fh:
                    fh.write("x")
            report({{"writes": {{t: attempt(lambda t=t: write(t)) for t in {targets!r}}},
                     "control": attempt(lambda: write("/scratch/ok"))}})
            """,
            tmp_path,
        )
    )
    assert out["control"].startswith("ok"), out
    for target, outcome in out["writes"].items():
        assert outcome.startswith("blocked: "), (target, outcome)
        assert not Path(target).exists() or target.startswith(("/job", "/proc", "/dev")), target
    assert not (installed / "pwned.py").exists()


def test_shell_subprocess_and_ctypes_stay_inside(tmp_path: Path) -> None:
    out = reported(
        run_jailed(
            """
            import ctypes, subprocess
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            child = subprocess.run([sys.executable, "-I", "-S", "-c",
                                    "print(open('/etc/shadow').read())"],
                                   capture_output=True, text=True)
            report({
                "system": os.system("id"),
                "shell": attempt(lambda: subprocess.run(["/bin/sh", "-c", "id"])),
                "uid": libc.getuid(),
                # a nested user namespace would give the code root-like powers again
                "unshare": libc.unshare(0x10000000),
                "mount": libc.mount(b"none", b"/scratch", b"tmpfs", 0, None),
                "child_rc": child.returncode,
                "child_err": child.stderr[-200:],
            })
            """,
            tmp_path,
        )
    )
    assert out["system"] != 0  # there is no /bin/sh in the jail
    assert out["shell"].startswith("blocked: FileNotFoundError"), out
    assert out["uid"] == 65534
    assert out["unshare"] == -1 and out["mount"] == -1
    # a child process works, but inside the same walls
    assert out["child_rc"] == 1 and "FileNotFoundError" in out["child_err"], out


def test_unix_and_tcp_sockets_of_the_host_are_unreachable(tmp_path: Path) -> None:
    path_server = socket.socket(socket.AF_UNIX)
    sock_path = tmp_path / "host.sock"
    path_server.bind(str(sock_path))
    abstract = f"\0herd-test-{uuid.uuid4().hex}"
    abstract_server = socket.socket(socket.AF_UNIX)
    abstract_server.bind(abstract)
    tcp_server = socket.socket()
    tcp_server.bind(("127.0.0.1", 0))
    port = tcp_server.getsockname()[1]
    servers = (path_server, abstract_server, tcp_server)
    for server in servers:
        server.listen(1)
        server.settimeout(0.2)
    try:
        out = reported(
            run_jailed(
                f"""
                import _socket
                def unix(address):
                    s = _socket.socket(_socket.AF_UNIX)
                    s.connect(address)
                def tcp(host, port):
                    s = _socket.socket()
                    s.connect((host, port))
                report({{"path": attempt(lambda: unix({str(sock_path)!r})),
                         "abstract": attempt(lambda: unix({abstract!r})),
                         "loopback": attempt(lambda: tcp("127.0.0.1", {port})),
                         "outside": attempt(lambda: tcp("10.255.255.1", 80))}})
                """,
                tmp_path,
            )
        )
        assert out["path"].startswith("blocked: FileNotFoundError"), out
        assert out["abstract"].startswith("blocked: ConnectionRefusedError"), out
        assert out["loopback"].startswith("blocked: ConnectionRefusedError"), out
        assert "Network is unreachable" in out["outside"], out
        for server in servers:
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        for server in servers:
            server.close()


def test_fork_bomb_is_bounded(tmp_path: Path) -> None:
    limits = JailLimits(processes=16)
    cgroup = jail.PidsCgroup.create(limits.processes)
    cap = jail.process_cap(limits, cgroup)
    cgroup.remove()
    if cap.startswith("processes: not capped"):
        pytest.skip(cap)
    started = time.perf_counter()
    run = run_jailed(
        """
        import time
        made = 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            made += 1
        report({"made": made})
        """,
        tmp_path,
        processes=16,
    )
    assert reported(run)["made"] < 16
    # the 30 s sleepers died with the jail's PID namespace
    assert time.perf_counter() - started < 8


def test_no_daemon_outlives_the_run(tmp_path: Path) -> None:
    token = f"herd-daemon-{uuid.uuid4().hex}"
    started = time.perf_counter()
    run = run_jailed(
        f"""
        import subprocess
        # a double-forked, setsid daemon that would keep running for a minute
        subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(60)",
                          {token!r}], start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        report({{"started": True}})
        """,
        tmp_path,
    )
    assert reported(run) == {"started": True}
    assert time.perf_counter() - started < 8
    time.sleep(0.2)
    assert leftovers(token) == []


def test_timeout_kills_a_setsid_grandchild_holding_stdout(tmp_path: Path) -> None:
    token = f"herd-holder-{uuid.uuid4().hex}"
    started = time.perf_counter()
    run = run_jailed(
        f"""
        import subprocess, time
        # inherits stdout and stderr: a plain communicate() would wait for it
        subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(60)",
                          {token!r}], start_new_session=True)
        time.sleep(60)
        """,
        tmp_path,
        timeout_s=1.0,
    )
    elapsed = time.perf_counter() - started
    assert run.timed_out
    assert elapsed < 5, elapsed
    time.sleep(0.2)
    assert leftovers(token) == []


def test_disk_fill_and_shared_memory_are_capped(tmp_path: Path) -> None:
    out = reported(
        run_jailed(
            """
            chunk = b"x" * (1024 * 1024)
            def fill():
                written, n = 0, 0
                try:
                    while written < 64 * 1024 * 1024:
                        with open(f"/scratch/f{n}", "wb") as fh:
                            for _ in range(3):
                                fh.write(chunk)
                                fh.flush()
                                written += len(chunk)
                        n += 1
                except OSError as exc:
                    return written, exc.strerror
                return written, None
            def big():
                with open("/scratch/big", "wb") as fh:
                    for _ in range(6):
                        fh.write(chunk)
                        fh.flush()
            report({"big": attempt(big), "fill": fill(),
                    "shm": attempt(lambda: open("/dev/shm/x", "wb").write(chunk))})
            """,
            tmp_path,
            scratch_mb=8,
            file_mb=4,
        )
    )
    assert out["big"].startswith("blocked: OSError: [Errno 27] File too large"), out
    written, error = out["fill"]
    assert error == "No space left on device" and written <= 8 * 1024 * 1024, out
    assert out["shm"].startswith("blocked: "), out


def test_stdout_flood_is_cut_at_the_cap(tmp_path: Path) -> None:
    me = psutil.Process()
    before = me.memory_info().rss
    started = time.perf_counter()
    run = run_jailed(
        """
        chunk = b"y" * (1024 * 1024)
        for _ in range(300):
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        """,
        tmp_path,
        output_bytes=256 * 1024,
    )
    assert run.overflow == "stdout"
    assert len(run.stdout) == 256 * 1024
    assert time.perf_counter() - started < 8
    assert me.memory_info().rss - before < 64 * 1024 * 1024


def test_invalid_utf8_output_is_decoded_with_replacement(tmp_path: Path) -> None:
    from modelherd.agents import sandbox

    sample = (Path(__file__).resolve().parents[2] / "agents" / "data" / "BTC_1d.csv").read_text()
    run = run_jailed(
        """
        sys.stdout.buffer.write(b"bad \\xff\\xfe bytes")
        sys.stderr.buffer.write(b"\\xc3\\x28")
        os.write(int(sys.argv[2]), b"\\xff{not json")
        """,
        tmp_path,
    )
    result = sandbox.interpret(run, sample, JailLimits(), 1_000_000.0, "note")
    assert not result.ok
    assert result.error == "the backtest's result is not valid UTF-8 — not trusted"
    assert result.stdout == "bad \ufffd\ufffd bytes"


def test_the_parent_process_environment_is_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    out = reported(run_jailed("report(dict(os.environ))", tmp_path))
    assert out == jail.environment()


def test_interpreter_runs_isolated_from_user_site() -> None:
    # -I -S: no PYTHONPATH, no user site, no .pth files (an editable install's finder
    # would otherwise import from the source tree, which the jail does not mount)
    argv = jail.jailed_argv(Path("/nonexistent"), JailLimits(), ["python"])
    assert "--unshare-all" in argv and "--die-with-parent" in argv
    assert "--new-session" in argv and "--clearenv" in argv
    mounted = {argv[i + 1] for i, arg in enumerate(argv) if arg == "--ro-bind"}
    assert not any(Path(p) == Path.home() for p in mounted)
    assert str(Path(__file__).resolve().parents[2]) not in mounted
    assert os.path.realpath(sys.executable) in mounted


def test_kill_9_of_herd_takes_the_jailed_child_with_it(tmp_path: Path) -> None:
    token = f"herd-orphan-{uuid.uuid4().hex}"
    # the token reaches the parent through its environment, so only the jailed
    # grandchild carries it on its command line
    parent_script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from modelherd.agents import jail
        code = "import subprocess, sys, time\\n" + (
            "subprocess.Popen([sys.executable, '-I', '-S', '-c', 'import time; time.sleep(60)', "
            + repr(os.environ["HERD_TEST_TOKEN"]) + "])\\ntime.sleep(60)\\n"
        )
        jail.run_python({{"main.py": code}}, "main.py", Path({str(tmp_path / "w")!r}),
                        jail.JailLimits(timeout_s=60))
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script], env={**os.environ, "HERD_TEST_TOKEN": token}
    )
    try:
        deadline = time.monotonic() + 20
        while not leftovers(token) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftovers(token), "the jailed child never started"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    deadline = time.monotonic() + 5
    while leftovers(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers(token) == []
