"""`herd top` reads the live status file of a running herd; the resource sampler feeds it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import click
import pytest
from click.testing import CliRunner
from modelherd import ProviderError
from modelherd.plugins.observability import alerts
from modelherd.plugins.observability.alerts.top import top_command
from modelherd.plugins.resources import monitor as resource_monitor
from modelherd.testing import MockModel, make_herd


def _cli() -> click.Group:
    group = click.Group("herd")
    alerts.register_commands(group)
    return group


def _run_busy_herd(status_dir: Path, columns: int = 140) -> dict[str, Any]:
    """A herd with two models (one failing behind a breaker) and real resource samples."""
    fast = MockModel(default="ok ok ok")
    sick = MockModel()
    sick.enqueue(*[ProviderError("down")] * 3)
    herd = make_herd(
        {"fast": fast, "sick": sick},
        config={
            "herd": {"retries": 0},
            "models": {"fast": {"provider": "mock", "model": "fast-1", "n_ctx": 100}},
            "plugins": {
                "alerts": {
                    "status_dir": str(status_dir),
                    "eval_interval_s": 3600,
                    "status_interval_s": 3600,
                    "breaker_failures": 3,
                },
                "resource_monitor": {"interval_s": 3600},
            },
        },
        plugins=(alerts, resource_monitor),
        fallbacks={"sick": ["fast"]},
    )
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with herd:
            for _ in range(5):
                await herd.chat("fast", "one two three four", temperature=0.7, cache="no-store")
                await herd.chat("sick", "five six seven eight", cache="no-store")
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None
            hooks.write_status()
            path = status_dir / f"status-{os.getpid()}.json"
            seen["status"] = json.loads(path.read_text())
            result = CliRunner().invoke(
                _cli(),
                ["top", "--dir", str(status_dir), "--once"],
                env={"COLUMNS": str(columns)},
            )
            seen["frame"] = result.output
            seen["exit"] = result.exit_code
        seen["gone"] = not path.exists()

    anyio.run(main)
    return seen


def test_status_file_and_one_frame(tmp_path: Path) -> None:
    seen = _run_busy_herd(tmp_path)
    status = seen["status"]
    fast, sick = status["models"]["fast"], status["models"]["sick"]
    assert fast["calls"] == 10  # 5 own calls + 5 fallbacks from 'sick'
    assert fast["temperature"] == 0.7
    assert fast["context_use"] == pytest.approx(4 / 100)
    assert fast["latency_p50_s"] is not None and fast["error_rate"] == 0
    assert sick["circuit"] == "open" and sick["errors"] == 3
    assert status["overall"]["calls"] == 10 and status["overall"]["error_rate"] == 0
    assert status["resources"]["cpu_percent"] is not None
    assert status["resources"]["memory_total_bytes"] > 0
    assert [a["kpi"] for a in status["alerts"]] == ["circuit_open"]
    assert seen["exit"] == 0, seen["frame"]
    frame = seen["frame"]
    for text in ("herd top", "fast", "sick", "open", "circuit_open", "CPU", "memory", "4%"):
        assert text in frame
    assert seen["gone"], "the status file is removed at aclose()"


def test_one_frame_is_readable_at_80_columns(tmp_path: Path) -> None:
    seen = _run_busy_herd(tmp_path, columns=80)
    assert seen["exit"] == 0, seen["frame"]
    frame = seen["frame"]
    lines = frame.splitlines()
    assert max(len(line) for line in lines) <= 80, frame
    assert "…" not in frame, frame  # no header and no value cut short
    # every column header is whole, each model's row is in both halves of the table
    for header in ("calls/s", "p50", "p95", "tok/s", "in-flight", "ctx use", "cache hit"):
        assert header in frame, frame
    assert "models: traffic" in frame and "models: state" in frame
    assert "4%" in frame and "circuit_open" in frame
    fast = seen["status"]["models"]["fast"]
    assert f"{fast['calls_per_s']:.2f}" in frame and f"{fast['tokens_per_s']:.1f}" in frame


def test_json_and_svg(tmp_path: Path) -> None:
    seen = _run_busy_herd(tmp_path / "run")
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps(seen["status"]))
    result = CliRunner().invoke(top_command, ["--file", str(status_file), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["models"]["sick"]["circuit"]
    svg = tmp_path / "top.svg"
    result = CliRunner().invoke(top_command, ["--file", str(status_file), "--svg", str(svg)])
    assert result.exit_code == 0, result.output
    assert svg.read_text().startswith("<svg") and "sick" in svg.read_text()


def test_no_running_herd_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(top_command, ["--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert (
        f"Error: no running herd found in {tmp_path} — start a program that uses" in result.output
    )
    result = CliRunner().invoke(top_command, ["--dir", str(tmp_path), "--pid", "999999"])
    assert "no status file for pid 999999" in result.output
    stale = tmp_path / "status-999999999.json"
    stale.write_text("{}")
    result = CliRunner().invoke(top_command, ["--dir", str(tmp_path)])
    assert "no running herd found" in result.output and not stale.exists()
    bad = tmp_path / "x.json"
    bad.write_text("not json")
    result = CliRunner().invoke(top_command, ["--file", str(bad), "--once"])
    assert result.exit_code == 1 and "is it a herd status file?" in result.output


def test_sampler_reads_the_host_and_degrades_without_a_gpu() -> None:
    sampler = resource_monitor.ResourceSampler(interval_s=0.05)
    first = sampler.sample()
    assert 0 <= first["cpu_percent"] <= 100 * first["cpu_count"]
    assert 0 < first["memory_percent"] < 100 and first["process_rss_bytes"] > 0
    second = sampler.sample()
    assert "net_sent_bps" in second
    # resource KPIs judge the mean over the window, not one busy moment
    mean = sampler.window_mean(60)["cpu_percent"]
    assert mean == pytest.approx((first["cpu_percent"] + second["cpu_percent"]) / 2)
    has_gpu = second.get("gpus") is not None
    if not has_gpu:  # this box: no NVIDIA driver, so NVML failed once, quietly
        assert second["gpu_percent"] is None and sampler.nvml is not None
        assert sampler.nvml.failed
    else:
        assert 0 <= second["gpu_percent"] <= 100
    sampler.start()
    sampler.stop()


def test_sampler_runs_in_the_background() -> None:
    herd = make_herd(
        config={"plugins": {"resource_monitor": {"interval_s": 0.02}}}, plugins=(resource_monitor,)
    )

    async def main() -> None:
        async with herd:
            sampler = resource_monitor.sampler_for(herd)
            assert sampler is not None
            first = len(sampler.history)
            for _ in range(100):
                if len(sampler.history) > first:
                    break
                await anyio.sleep(0.01)
            assert len(sampler.history) > first  # the thread took a reading on its own
            assert sampler.latest["cpu_percent"] is not None
        assert resource_monitor.sampler_for(herd) is None

    anyio.run(main)


def test_unwritable_status_dir_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    herd = make_herd(
        config={
            "plugins": {
                "alerts": {"status_dir": str(blocker / "sub")},
                "resource_monitor": {"enabled": False},
            }
        },
        plugins=(alerts,),
    )

    async def main() -> None:
        async with herd:
            assert (await herd.chat("mock", "hi")).content == "ok"
            hooks = alerts.alert_hooks(herd)
            assert hooks is not None and hooks.status_file is None

    anyio.run(main)
    (record,) = [r for r in caplog.records if "status file" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert "set [plugins.alerts] status_dir or HERD_STATUS_DIR" in record.getMessage()


def test_nvml_readings_are_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU on this box: a stand-in `pynvml` with NVML's API checks the mapping (two
    devices, the busiest counts). The real NVML path runs only where a GPU is present."""
    import sys
    import types

    class Util:
        def __init__(self, gpu: int) -> None:
            self.gpu = gpu

    class Mem:
        def __init__(self, used: int, total: int) -> None:
            self.used, self.total = used, total

    fake = types.ModuleType("pynvml")
    calls: list[str] = []
    fake.nvmlInit = lambda: calls.append("init")  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: Util([35, 90][h])  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = (  # type: ignore[attr-defined]
        lambda h: Mem([8, 60][h] * 2**30, 80 * 2**30)
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = resource_monitor.ResourceSampler()
    sample = sampler.sample()
    assert sample["gpu_percent"] == 90.0
    assert sample["gpu_memory_percent"] == pytest.approx(75.0)
    assert sample["gpu_memory_used_bytes"] == 68 * 2**30
    assert len(sample["gpus"]) == 2
    sampler.stop()
    assert calls == ["init", "shutdown"]

    def no_driver() -> None:
        raise OSError("NVML Shared Library Not Found")

    fake.nvmlInit = no_driver  # type: ignore[attr-defined]
    quiet = resource_monitor.ResourceSampler()
    assert quiet.sample()["gpu_percent"] is None
    assert quiet.nvml is not None and quiet.nvml.failed


def test_default_status_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from modelherd.plugins.observability.alerts.status import default_status_dir

    monkeypatch.delenv("HERD_STATUS_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_status_dir() == tmp_path / "modelherd"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert default_status_dir().name.startswith("modelherd-")
    monkeypatch.setenv("HERD_STATUS_DIR", str(tmp_path / "mine"))
    assert default_status_dir() == tmp_path / "mine"
    assert default_status_dir("/x/y") == Path("/x/y")


def test_context_length_from_the_providers_own_settings() -> None:
    from modelherd.plugins.observability.alerts.runtime import _context_length
    from modelherd.provider import ProviderSettings

    class WithContext(ProviderSettings):
        n_ctx: int = 2048  # as llamacpp's settings default it

    model = MockModel()
    herd = make_herd({"m": model})
    herd.get_model("m")
    assert _context_length(herd, "m", {}) is None
    model.settings = WithContext()
    assert _context_length(herd, "m", {}) == 2048
    assert _context_length(herd, "m", {"num_ctx": 8192}) == 8192  # the call's option wins
