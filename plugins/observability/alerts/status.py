"""The live status file `herd top` reads: one JSON file per running herd process.

Why a file and not a local HTTP endpoint: it needs no port (no clash between several
processes, nothing listening on the network), works for a short script as well as a
server, and `herd top` finds every running herd by listing one directory. The file
is `<status_dir>/status-<pid>.json`, rewritten atomically (write + rename) every
`status_interval_s` by the alerts plugin's background thread, and removed at
`herd.aclose()`. A file whose process is gone is ignored (and cleaned up) by readers.

Files are 0600 and the folder 0700. In a shared temp folder (/tmp) anyone can create
`modelherd-<uid>` first: a folder there that is a symbolic link, or belongs to another
user, is refused (the status file is not written, `herd top` reads nothing from it)
instead of followed.

Default directory: platformdirs' user runtime dir + "/modelherd" (on Linux
`$XDG_RUNTIME_DIR/modelherd`, e.g. /run/user/1000/modelherd), or `<tmp>/modelherd-<uid>`
where there is no runtime dir; overridable with `[plugins.alerts] status_dir` or
`HERD_STATUS_DIR`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

SCHEMA = 1


def default_status_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("HERD_STATUS_DIR")
    if env:
        return Path(env).expanduser()
    import sys
    import tempfile

    if not (sys.platform.startswith("linux") and not os.environ.get("XDG_RUNTIME_DIR")):
        import platformdirs

        runtime = Path(platformdirs.user_runtime_dir("modelherd"))
        if runtime.parent.is_dir():
            return runtime
    # no per-user runtime dir (containers, service accounts): a per-user temp dir

    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"modelherd-{uid}"


def status_path(directory: Path, pid: int | None = None) -> Path:
    return directory / f"status-{pid if pid is not None else os.getpid()}.json"


def _shared_roots() -> list[Path]:
    roots = {Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")}
    return [r.resolve() for r in roots if r.is_dir()]


def in_shared_tmp(directory: Path) -> bool:
    """True when `directory` sits directly in a folder every user can create entries
    in (/tmp): there, someone else may have made it first. (Deeper folders are guarded
    by their parents' owners and modes.)"""
    parent = directory.parent.resolve() if directory.parent.exists() else directory.parent
    return any(parent == root for root in _shared_roots())


def secure_dir(directory: Path) -> Path:
    """Create the status folder 0700; in a shared temp folder refuse one that is a
    symbolic link or belongs to someone else (PermissionError saying so)."""
    shared = in_shared_tmp(directory)
    if shared:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    else:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(directory)
    if not shared:
        return directory
    fix = "remove it, or set HERD_STATUS_DIR / [plugins.alerts] status_dir"
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(
            errno.EPERM, f"{directory} is a symbolic link in a shared folder (refused) — {fix}"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(errno.EPERM, f"{directory} is not a folder (refused) — {fix}")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise PermissionError(
            errno.EPERM,
            f"{directory} belongs to uid {info.st_uid}, not to you (refused) — {fix}",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)
    return directory


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically: a reader never sees half a JSON document."""
    secure_dir(path.parent)
    # one temp name per writer thread: two herds in one process share the status
    # path, and a shared temp name let one writer rename the other's file away
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    payload = json.dumps(data, default=str).encode("utf-8", "replace")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a killed writer with our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(payload)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    import psutil

    return bool(psutil.pid_exists(pid))


def list_status_files(directory: Path) -> list[Path]:
    """Status files of live processes, newest first (stale ones are removed)."""
    if not directory.is_dir():
        return []
    if in_shared_tmp(directory):
        try:
            secure_dir(directory)
        except OSError:  # planted by someone else: read nothing from it
            return []
    found: list[tuple[float, Path]] = []
    for path in directory.glob("status-*.json"):
        try:
            pid = int(path.stem.removeprefix("status-"))
        except ValueError:
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:
            continue
    return [p for _, p in sorted(found, reverse=True)]


def read_status(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
