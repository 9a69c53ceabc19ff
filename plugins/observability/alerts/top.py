"""`herd top`: a live terminal dashboard of a running herd process.

It reads the status file the alerts plugin of that process rewrites every second
(status.py says why a file and where it lives) and redraws with rich's Live.
`--once` prints one frame, `--json` the raw status, `--svg PATH` saves a frame as an
image (how docs/images/herd-top.svg was made).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click


def _pct(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "—"


def _level(value: float | None, threshold: float) -> str:
    if value is None:
        return "dim"
    return "bold red" if value > threshold else ("yellow" if value > threshold * 0.8 else "green")


#: the model table's columns; below `WIDE` console columns they are shown as two
#: tables (traffic, then state) so that no value is cut to "…" on an 80-column terminal
TRAFFIC_COLUMNS = ("calls/s", "p50", "p95", "err", "tok/s", "in-flight")
STATE_COLUMNS = ("temp", "ctx use", "cache hit", "quality", "circuit")
WIDE = 110


def _model_cells(m: dict[str, Any]) -> dict[str, Any]:
    from rich.text import Text

    circuit = m.get("circuit", "closed")
    circuit_style = {"closed": "green", "open": "bold red", "half_open": "yellow"}
    temp = m.get("temperature")
    return {
        "calls/s": f"{m.get('calls_per_s') or 0:.2f}",
        "p50": _secs(m.get("latency_p50_s")),
        "p95": Text(_secs(m.get("latency_p95_s")), _level(m.get("latency_p95_s"), 2.0)),
        "err": Text(_pct(m.get("error_rate"), 1), _level(m.get("error_rate"), 0.05)),
        "tok/s": f"{m.get('tokens_per_s') or 0:.1f}",
        "in-flight": str(m.get("inflight", 0)),
        "temp": "—" if temp is None else f"{temp:g}",
        "ctx use": _pct(m.get("context_use")),
        "cache hit": _pct(m.get("cache_hit_rate")),
        "quality": _pct(m.get("quality"), 1),
        "circuit": Text(circuit, circuit_style.get(circuit, "")),
    }


def _models_table(title: str, columns: tuple[str, ...], models: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(
        title=title, title_justify="left", expand=True, header_style="bold", box=box.SIMPLE_HEAD
    )
    # a long alias folds onto more lines; a number never shrinks below its width
    table.add_column("model", min_width=10, overflow="fold", ratio=1)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for alias, m in sorted(models.items()):
        cells = _model_cells(m)
        table.add_row(alias, *(cells[c] for c in columns))
    return table


def render(status: dict[str, Any], width: int = WIDE) -> Any:
    """One frame of the dashboard (a rich renderable) from a status document.

    `width` is the console's: a narrow one gets the model table in two parts.
    """
    from rich import box
    from rich.columns import Columns
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    overall = status.get("overall", {})
    age = time.time() - float(status.get("time", time.time()))
    uptime = float(status.get("time", 0)) - float(status.get("started", 0))
    stale = age > 5
    cells = [
        Text("herd top", "bold cyan"),
        Text(f"pid {status.get('pid')}"),
        Text(f"up {uptime:.0f}s", "dim"),
        Text.assemble("window ", (f"{status.get('window_s', 0):g}s", "bold")),
        Text.assemble("calls/s ", (f"{overall.get('calls_per_s') or 0:.2f}", "bold")),
        Text.assemble(
            "errors ", (_pct(overall.get("error_rate"), 1), _level(overall.get("error_rate"), 0.05))
        ),
        Text.assemble("in-flight ", (str(overall.get("inflight", 0)), "bold")),
    ]
    if stale:
        cells.append(Text(f"stale: {age:.0f}s old", "bold red"))
    # Columns moves whole cells to the next line instead of cutting them
    header = Columns(cells, padding=(0, 3))

    found = status.get("models", {})
    model_parts: list[Any]
    if width >= WIDE:
        model_parts = [_models_table("models", TRAFFIC_COLUMNS + STATE_COLUMNS, found)]
    else:
        model_parts = [
            _models_table("models: traffic", TRAFFIC_COLUMNS, found),
            _models_table("models: state", STATE_COLUMNS, found),
        ]

    r = status.get("resources") or {}
    cells = [
        Text.assemble(
            "CPU ",
            (
                f"{r['cpu_percent']:.0f}%" if r.get("cpu_percent") is not None else "—",
                _level(r.get("cpu_percent"), 80),
            ),
        ),
        Text.assemble(
            f"memory of {_bytes(r.get('memory_total_bytes'))} ",
            (
                f"{r['memory_percent']:.0f}%" if r.get("memory_percent") is not None else "—",
                _level(r.get("memory_percent"), 80),
            ),
        ),
        Text(f"process RSS {_bytes(r.get('process_rss_bytes'))}"),
        Text.assemble(
            "GPU ",
            (
                f"{r['gpu_percent']:.0f}%" if r.get("gpu_percent") is not None else "none",
                _level(r.get("gpu_percent"), 80),
            ),
        ),
        Text.assemble(
            "GPU memory ",
            (
                f"{r['gpu_memory_percent']:.0f}%"
                if r.get("gpu_memory_percent") is not None
                else "—",
                _level(r.get("gpu_memory_percent"), 80),
            ),
        ),
        Text(f"net ↑{_bytes(r.get('net_sent_bps'))}/s ↓{_bytes(r.get('net_recv_bps'))}/s"),
    ]
    res = Columns(cells, padding=(0, 3))

    alerts = status.get("alerts", [])
    if alerts:
        table = Table(
            title="active alerts",
            title_justify="left",
            expand=True,
            header_style="bold red",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("kpi", overflow="fold")
        table.add_column("scope", overflow="fold")
        table.add_column("for", justify="right")
        table.add_column("message")
        now = float(status.get("time", time.time()))
        for alert in alerts:
            table.add_row(
                alert["kpi"], alert["scope"], f"{now - alert['since']:.0f}s", alert["message"]
            )
        alerts_part: Any = table
    else:
        alerts_part = Text("no active alerts", style="green")
    return Panel(
        Group(header, Text(""), *model_parts, Text(""), res, Text(""), alerts_part),
        title="modelherd",
        border_style="cyan",
    )


def find_status(file: Path | None, directory: Path | None, pid: int | None) -> Path:
    from modelherd.plugins.observability.alerts.status import (
        default_status_dir,
        list_status_files,
        status_path,
    )

    if file is not None:
        if not file.is_file():
            raise click.ClickException(f"{file} does not exist — check the --file path")
        return file
    where = directory or default_status_dir()
    if pid is not None:
        path = status_path(where, pid)
        if not path.is_file():
            raise click.ClickException(
                f"no status file for pid {pid} in {where} — is that process a herd with the "
                f"alerts plugin on? (run `herd top` without --pid to list what is there)"
            )
        return path
    found = list_status_files(where)
    if not found:
        raise click.ClickException(
            f"no running herd found in {where} — start a program that uses modelherd "
            f"(its alerts plugin writes status-<pid>.json there once it has started), "
            f"or point to a file with --file"
        )
    return found[0]


def save_svg(status: dict[str, Any], path: Path, width: int = 120) -> None:
    from rich.console import Console

    console = Console(record=True, width=width, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render(status, width))
    console.save_svg(str(path), title="herd top")
    console.file.close()


@click.command("top")
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path),
    default=None,
    help="a status file to read (default: the newest in the status dir)",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="the status dir (default: $HERD_STATUS_DIR or the user runtime dir)",
)
@click.option("--pid", type=int, default=None, help="the herd process to watch")
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="seconds between redraws"
)
@click.option("--once", is_flag=True, help="print one frame and exit")
@click.option("--json", "as_json", is_flag=True, help="print the raw status as JSON and exit")
@click.option(
    "--svg",
    type=click.Path(path_type=Path),
    default=None,
    help="save one frame as an SVG image and exit",
)
def top_command(
    file: Path | None,
    directory: Path | None,
    pid: int | None,
    interval: float,
    once: bool,
    as_json: bool,
    svg: Path | None,
) -> None:
    """Live dashboard of a running herd: calls/s, latency, errors, tokens, circuits, alerts."""
    from modelherd.plugins.observability.alerts.status import read_status

    path = find_status(file, directory, pid)
    try:
        status = read_status(path)
    except (OSError, ValueError) as exc:
        raise click.ClickException(
            f"cannot read {path}: {exc} — is it a herd status file?"
        ) from None
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    if svg is not None:
        save_svg(status, svg)
        click.echo(f"saved {svg}")
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        console.print(render(status, console.width))
        return
    with Live(
        render(status, console.width), console=console, screen=False, auto_refresh=False
    ) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    status = read_status(path)
                except (OSError, ValueError):
                    if not path.exists():
                        console.print(f"[yellow]process {status.get('pid')} has ended[/]")
                        return
                    continue  # caught mid-rename: try again next tick
                live.update(render(status, console.width), refresh=True)
        except KeyboardInterrupt:
            return
