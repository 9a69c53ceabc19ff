"""The live status file `herd top` reads: one JSON file per running herd process.

Why a file and not a local HTTP endpoint: it needs no port (no clash between several
processes, nothing listening on the network), works for a short script as well as a
server, and `herd top` finds every running herd by listing one directory. The file
is `<status_dir>/status-<pid>.json`, rewritten atomically (write + rename) every
`status_interval_s` by the alerts plugin's background thread, and removed at
`herd.aclose()`. A file whose process is gone is ignored (and cleaned up) by readers.

Default directory: platformdirs' user runtime dir + "/modelherd" (on Linux
`$XDG_RUNTIME_DIR/modelherd`, e.g. /run/user/1000/modelherd), or `<tmp>/modelherd-<uid>`
where there is no runtime dir; overridable with `[plugins.alerts] status_dir` or
`HERD_STATUS_DIR`.
"""

from __future__ import annotations

import contextlib
import json
import os
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


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically: a reader never sees half a JSON document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temp name per writer thread: two herds in one process share the status
    # path, and a shared temp name let one writer rename the other's file away
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    import psutil

    return bool(psutil.pid_exists(pid))


def list_status_files(directory: Path) -> list[Path]:
    """Status files of live processes, newest first (stale ones are removed)."""
    if not directory.is_dir():
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
