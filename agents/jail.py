"""A bubblewrap jail for model-written Python: what it may see, write, spawn and print.

The jail (docs/security.md, "Model-written code"):
- namespaces: user, mount, PID, network, IPC, UTS, cgroup (`bwrap --unshare-all`), no
  nested user namespaces (`--disable-userns`), every capability dropped;
- files: only the interpreter, its standard library, the site-packages folders the
  parent runs with, and the system's shared libraries (/usr/lib), all read-only; the
  job folder (harness, code, data) read-only at /job; a size-capped tmpfs at /scratch
  is the only writable place (there is no /tmp, /etc, /home, no shell, no /dev/shm);
- environment: built from nothing (`--clearenv`): no key, token or proxy variable;
- processes: `--die-with-parent`, `--new-session`; a pids cgroup caps the number of
  processes where one can be created (root, delegated cgroups), RLIMIT_NPROC (set by
  the harness inside the user namespace) caps it for ordinary users; the PID namespace
  dies with its init, so a timeout or a normal exit leaves nothing running;
- rlimits (CPU, address space, file size, open files, no core dumps) through
  `prlimit`, in force before the interpreter starts;
- output: stdout, stderr and the result pipe are read with a byte cap each; past a
  cap the jail is killed and the run fails.
The parent never trusts what the child says it computed (agents/rbi_stats.py).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: where the job folder and the scratch tmpfs appear inside the jail
JOB = "/job"
SCRATCH = "/scratch"

FIX = (
    "install bubblewrap (apt-get install bubblewrap) and allow unprivileged user "
    "namespaces (sysctl kernel.unprivileged_userns_clone=1 / "
    "kernel.apparmor_restrict_unprivileged_userns=0)"
)


@dataclass(slots=True, frozen=True)
class JailLimits:
    timeout_s: float = 60.0
    cpu_s: int = 60
    memory_mb: int = 2048
    file_mb: int = 64
    open_files: int = 256
    processes: int = 32
    scratch_mb: int = 64
    #: per stream (stdout, stderr); the result pipe gets the same cap
    output_bytes: int = 1024 * 1024


@dataclass(slots=True)
class Captured:
    """What a jailed process left: exit status, capped output, why it stopped."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    result: bytes
    duration_s: float
    timed_out: bool = False
    #: the stream that passed its byte cap (the process was then killed)
    overflow: str | None = None


@dataclass(slots=True, frozen=True)
class JailStatus:
    available: bool
    reason: str = ""


def _bwrap() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def probe() -> JailStatus:
    """Whether the jail can be built here: the interpreter starts in it, full profile."""
    if not sys.platform.startswith("linux"):
        return JailStatus(False, f"the rbi jail needs Linux (this is {sys.platform})")
    exe = _bwrap()
    if exe is None:
        return JailStatus(False, "bwrap (bubblewrap) is not installed")
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    argv = [exe, *namespace_args(), *mount_args(scratch, JailLimits(scratch_mb=1))]
    argv += [interpreter(), "-I", "-S", "-B", "-c", "pass"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return JailStatus(False, f"bwrap did not start: {exc}")
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        return JailStatus(False, f"bwrap cannot build the jail here: {detail[0][:200]}")
    return JailStatus(True)


def namespace_args() -> list[str]:
    return [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "jail",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]


def interpreter_paths() -> list[str]:
    """Read-only folders the interpreter needs: its stdlib, its shared library's folder
    and the site-packages folders this process imports from (a venv's included)."""
    paths = {
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["platstdlib"],
    }
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        paths.add(str(libdir))
    paths.update(site_paths())
    return sorted(p for p in paths if p and Path(p).is_dir())


def site_paths() -> list[str]:
    """The site-packages folders of this interpreter (the jail adds them to sys.path;
    `-S` keeps .pth files, editable installs included, from adding anything else)."""
    found: list[str] = []
    for entry in sys.path:
        name = Path(entry).name
        if name in ("site-packages", "dist-packages") and Path(entry).is_dir():
            found.append(entry)
    return found


def interpreter() -> str:
    return os.path.realpath(sys.executable)


def mount_args(job: Path, limits: JailLimits) -> list[str]:
    args: list[str] = []
    for system in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if Path(system).is_dir():
            args += ["--ro-bind", system, system]
    for top in ("/lib", "/lib64", "/lib32"):
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(top), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    exe = interpreter()
    args += ["--ro-bind", exe, exe]
    for folder in interpreter_paths():
        args += ["--ro-bind", folder, folder]
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    args += ["--size", str(limits.scratch_mb * 1024 * 1024), "--tmpfs", SCRATCH]
    args += ["--ro-bind", str(job), JOB, "--remount-ro", "/", "--chdir", SCRATCH]
    return args


def environment() -> dict[str, str]:
    """Everything the jailed process finds in its environment."""
    return {
        "PATH": "/nonexistent",
        "HOME": SCRATCH,
        "PWD": SCRATCH,  # bwrap sets it after --chdir; listed so the list is complete
        "TMPDIR": SCRATCH,
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def rlimit_prefix(limits: JailLimits) -> list[str]:
    """`prlimit` in front of bwrap: the limits hold before the interpreter starts.
    (RLIMIT_NPROC is set by the harness inside the user namespace, where it counts
    the jail's processes only.)"""
    exe = shutil.which("prlimit")
    if exe is None:
        return []
    mb = 1024 * 1024
    return [
        exe,
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_mb * mb}",
        f"--fsize={limits.file_mb * mb}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


# ---- the pids cgroup (where this process may create one) -------------------------

_COUNTER = itertools.count()


class PidsCgroup:
    """A pids cgroup with `pids.max` for one run, or nothing where none can be made."""

    def __init__(self, path: Path | None, limit: int) -> None:
        self.path = path
        self.limit = limit

    @classmethod
    def create(cls, limit: int) -> PidsCgroup:
        for parent in _cgroup_parents():
            path = parent / f"herd-jail-{os.getpid()}-{next(_COUNTER)}"
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                (path / "pids.max").write_text(str(limit))
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            return cls(path, limit)
        return cls(None, limit)

    def wrap(self, argv: list[str]) -> list[str]:
        """Start `argv` inside the cgroup: a shell joins it, then execs (no race with
        the first fork, unlike adding the pid after Popen)."""
        if self.path is None:
            return argv
        join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["/bin/sh", "-c", join, str(self.path), *argv]

    def kill_all(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            (self.path / "cgroup.kill").write_text("1")  # cgroup v2
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(line), signal.SIGKILL)

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                self.kill_all()
                time.sleep(0.02)


def _cgroup_parents() -> list[Path]:
    """Folders where a pids child cgroup may be made: our own cgroup (v1 pids
    hierarchy, or v2 with the pids controller)."""
    found: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1], parts[2].lstrip("/")
        if "pids" in controllers.split(","):
            found.append(Path("/sys/fs/cgroup/pids") / rel)
        elif parts[0] == "0" and controllers == "":
            for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                ctl = root / rel / "cgroup.subtree_control"
                with contextlib.suppress(OSError):
                    if "pids" in ctl.read_text().split():
                        found.append(root / rel)
    return [p for p in found if p.is_dir() and os.access(p, os.W_OK)]


# ---- running ---------------------------------------------------------------------


@dataclass(slots=True)
class PythonRun:
    captured: Captured
    #: which process cap was in force (for the isolation note)
    process_cap: str


def run_python(
    files: dict[str, str],
    script: str,
    workdir: Path,
    limits: JailLimits,
    *,
    jailed: bool = True,
    unjailed_prefix: list[str] | None = None,
) -> PythonRun:
    """Write `files` into `<workdir>/job` and run `python -I -S -B <job>/<script> <job>
    <result fd>` in the jail (or, `jailed=False`, as a plain child process behind
    `unjailed_prefix`, e.g. `unshare -rn`, with `<workdir>/scratch` as its folder)."""
    job = workdir / "job"
    scratch = workdir / "scratch"
    if scratch.exists():
        shutil.rmtree(scratch, ignore_errors=True)
    job.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, text in files.items():
        (job / name).write_text(text, encoding="utf-8")
    python = [interpreter(), "-I", "-S", "-B"]
    if not jailed:
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        prefix = list(unjailed_prefix or [])
        env = {**environment(), "HOME": str(scratch), "PWD": str(scratch), "TMPDIR": str(scratch)}
        captured = run_captured(
            lambda fd: [*prefix, *python, str(job / script), str(job), str(fd)],
            cwd=scratch,
            env=env,
            limits=limits,
        )
        return PythonRun(captured, "")
    cgroup = PidsCgroup.create(limits.processes)
    try:
        command = [*python, f"{JOB}/{script}", JOB]
        captured = run_captured(
            lambda fd: cgroup.wrap(jailed_argv(job, limits, [*command, str(fd)])),
            cwd=job,
            env=environment(),
            limits=limits,
            cgroup=cgroup,
        )
    finally:
        cgroup.remove()
    return PythonRun(captured, process_cap(limits, cgroup))


def process_cap(limits: JailLimits, cgroup: PidsCgroup) -> str:
    if cgroup.path is not None:
        return f"processes: pids cgroup (max {limits.processes})"
    if os.geteuid() == 0:
        return (
            "processes: not capped (root, and no writable pids cgroup: RLIMIT_NPROC does "
            "not bind root) — the timeout ends them"
        )
    return f"processes: RLIMIT_NPROC {limits.processes}"


def jailed_argv(job: Path, limits: JailLimits, command: list[str]) -> list[str]:
    exe = _bwrap() or "bwrap"
    return [
        *rlimit_prefix(limits),
        exe,
        *namespace_args(),
        *[arg for key, value in environment().items() for arg in ("--setenv", key, value)],
        *mount_args(job, limits),
        *command,
    ]


def run_captured(
    build: Callable[[int], list[str]],
    *,
    cwd: Path,
    env: dict[str, str],
    limits: JailLimits,
    cgroup: PidsCgroup | None = None,
) -> Captured:
    """Run `build(result_fd)` (the argv, told the number of the result pipe's write end);
    read stdout, stderr and the result pipe each up to `limits.output_bytes`; kill
    everything on timeout or overflow. Blocking: call it from a worker thread."""
    started = time.perf_counter()
    result_read, result_fd = os.pipe()
    try:
        argv = build(result_fd)
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(result_fd,),
            start_new_session=True,
        )
    finally:
        os.close(result_fd)  # the child holds the write end now

    def kill() -> None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill_all()

    assert proc.stdout is not None and proc.stderr is not None
    streams = {
        proc.stdout.fileno(): "stdout",
        proc.stderr.fileno(): "stderr",
        result_read: "result",
    }
    chunks: dict[str, bytearray] = {name: bytearray() for name in streams.values()}
    deadline = started + limits.timeout_s
    timed_out, overflow = _pump(streams, chunks, deadline, limits.output_bytes)
    if timed_out or overflow:
        kill()
        # the PID namespace dies with its init: the pipes close within moments
        _pump(streams, {n: bytearray() for n in streams.values()}, time.perf_counter() + 2, 0)
    try:
        returncode: int | None = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        kill()
        returncode = proc.wait(timeout=5)
    os.close(result_read)
    proc.stdout.close()
    proc.stderr.close()
    return Captured(
        returncode,
        bytes(chunks["stdout"]),
        bytes(chunks["stderr"]),
        bytes(chunks["result"]),
        time.perf_counter() - started,
        timed_out,
        overflow,
    )


def _pump(
    streams: dict[int, str], chunks: dict[str, bytearray], deadline: float, cap: int
) -> tuple[bool, str | None]:
    """Read the open streams until they all close (False, None), the deadline passes
    (True, None) or one passes `cap` bytes (False, name). cap 0 = read and discard."""
    selector = selectors.DefaultSelector()
    for fd in streams:
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
    try:
        while selector.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                return True, None
            for key, _ in selector.select(left):
                fd = int(key.fd)
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(fd)
                    continue
                if cap:
                    buffer = chunks[streams[fd]]
                    buffer += data
                    if len(buffer) > cap:
                        del buffer[cap:]
                        return False, streams[fd]
        return False, None
    finally:
        selector.close()
