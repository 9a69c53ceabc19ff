"""Resources sampled in the background: CPU, RAM, network (psutil), GPU (NVML).

On by default (`[plugins.resource_monitor] enabled = false` turns it off): a daemon
thread samples every `interval_s` seconds (2 s by default, ~0.1 ms of CPU each) and
adds nothing to a model call. NVML (nvidia-ml-py) is imported and initialised lazily
in that thread; with no NVIDIA GPU or driver the GPU fields stay None, silently.

The latest sample feeds the resource KPIs of the alerts plugin and `herd top`; the
otel plugin exports it as observable gauges (read at metric collection time, see
`GAUGES`), so no `on_metric` call ever comes from the sampler thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.config import validate_table
from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from modelherd import Herd

log = logging.getLogger("modelherd.resources")

SAMPLER_NAME = "resource-sampler"

#: sample key -> (metric name, unit, scale) for the gauges the otel plugin exports
GAUGES = {
    "cpu_percent": ("system.cpu.utilization", "1", 0.01),
    "memory_percent": ("system.memory.utilization", "1", 0.01),
    "process_rss_bytes": ("process.memory.usage", "By", 1.0),
    "net_sent_bps": ("system.network.io.rate", "By/s", 1.0),
    "gpu_percent": ("hw.gpu.utilization", "1", 0.01),
    "gpu_memory_used_bytes": ("hw.gpu.memory.usage", "By", 1.0),
}


class ResourceSettings(LazyModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_s: float = Field(default=2.0, gt=0)
    gpu: bool = True


def parse_settings(table: dict[str, Any], source: str) -> ResourceSettings:
    return validate_table(
        ResourceSettings, table, f"{source}: [plugins.resource_monitor]", "docs/observability.md"
    )


class _Nvml:
    """NVML, opened on first use; any failure means "no GPU here" for good."""

    def __init__(self) -> None:
        self.handles: list[Any] | None = None
        self.failed = False
        self.module: Any = None

    def sample(self) -> dict[str, Any]:
        if self.failed:
            return {}
        try:
            if self.handles is None:
                import pynvml

                pynvml.nvmlInit()
                self.module = pynvml
                count = pynvml.nvmlDeviceGetCount()
                self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            nv = self.module
            gpus = []
            for handle in self.handles:
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(
                    {
                        "percent": float(util.gpu),
                        "memory_used_bytes": int(mem.used),
                        "memory_total_bytes": int(mem.total),
                        "memory_percent": 100.0 * mem.used / mem.total if mem.total else 0.0,
                    }
                )
        except Exception as exc:  # no driver, no GPU, no package: degrade silently
            self.failed = True
            log.debug("no GPU sampling: %s", exc)
            return {}
        if not gpus:
            return {}
        return {
            "gpus": gpus,
            "gpu_percent": max(g["percent"] for g in gpus),
            "gpu_memory_percent": max(g["memory_percent"] for g in gpus),
            "gpu_memory_used_bytes": sum(g["memory_used_bytes"] for g in gpus),
        }

    def close(self) -> None:
        if self.handles is not None and self.module is not None:
            with contextlib.suppress(Exception):
                self.module.nvmlShutdown()
        self.handles = None


class ResourceSampler:
    """Samples in a daemon thread; `latest` is the last sample (a plain dict)."""

    def __init__(self, interval_s: float = 2.0, gpu: bool = True, herd: Herd | None = None) -> None:
        import psutil

        self.interval_s = interval_s
        self.herd = herd
        self.psutil = psutil
        self.process = psutil.Process()
        self.nvml = _Nvml() if gpu else None
        self.latest: dict[str, Any] = {}
        #: (monotonic time, sample) of recent samples, for averages over a window
        self.history: collections.deque[tuple[float, dict[str, Any]]] = collections.deque(
            maxlen=4096
        )
        self._net: tuple[float, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        psutil.cpu_percent(None)  # prime: the first reading is measured from here

    def sample(self, gpu: bool = True) -> dict[str, Any]:
        ps = self.psutil
        vm = ps.virtual_memory()
        now = time.monotonic()
        out: dict[str, Any] = {
            "time": time.time(),
            "cpu_percent": float(ps.cpu_percent(None)),
            "cpu_count": ps.cpu_count() or 1,
            "memory_percent": float(vm.percent),
            "memory_used_bytes": int(vm.total - vm.available),
            "memory_total_bytes": int(vm.total),
            "process_rss_bytes": int(self.process.memory_info().rss),
            "gpu_percent": None,
            "gpu_memory_percent": None,
        }
        try:
            net = ps.net_io_counters()
            if self._net is not None and net is not None:
                then, sent, recv = self._net
                dt = max(now - then, 1e-6)
                out["net_sent_bps"] = (net.bytes_sent - sent) / dt
                out["net_recv_bps"] = (net.bytes_recv - recv) / dt
            if net is not None:
                self._net = (now, net.bytes_sent, net.bytes_recv)
        except Exception:  # some containers hide /proc/net
            pass
        if self.nvml is not None and gpu:
            out.update(self.nvml.sample())
        self.latest = out
        self.history.append((now, out))
        return out

    def window_mean(self, seconds: float) -> dict[str, Any]:
        """The latest sample, with its percentages averaged over the last `seconds`.

        Resource KPIs judge these: one busy moment of a sampled CPU is not an alert.
        """
        cutoff = time.monotonic() - seconds
        recent = [s for t, s in list(self.history) if t >= cutoff]
        out = dict(self.latest)
        for key in ("cpu_percent", "memory_percent", "gpu_percent", "gpu_memory_percent"):
            values = [s[key] for s in recent if s.get(key) is not None]
            if values:
                out[key] = sum(values) / len(values)
        return out

    def _run(self) -> None:
        # wait first: start() took a host reading already, and the first GPU reading
        # imports NVML (~20 ms holding the GIL) — better not during the herd's first call
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as exc:  # never let the sampler die on one bad reading
                log.debug("resource sample failed: %s", exc)

    def start(self) -> None:
        if self._thread is None:
            # a first reading at once (host only: NVML may take a while to open), so the
            # KPIs and `herd top` have numbers before the thread's first tick
            self.sample(gpu=False)
            self._thread = threading.Thread(target=self._run, name="herd-resources", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self.nvml is not None:
            self.nvml.close()


def sampler_for(herd: Herd) -> ResourceSampler | None:
    """The running sampler of this herd, if the plugin is on and started."""
    if not herd.plugins_loaded:
        return None
    plugin = herd.pm.get_plugin(SAMPLER_NAME)
    return plugin if isinstance(plugin, ResourceSampler) else None


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("resource_monitor", parse_settings, "docs/observability.md")


@hookimpl
def startup(herd: Herd) -> None:
    if herd.pm.get_plugin(SAMPLER_NAME) is not None:
        return
    settings = parse_settings(herd.plugin_settings("resource_monitor"), herd.config.source)
    if not settings.enabled:
        return
    sampler = ResourceSampler(settings.interval_s, settings.gpu, herd)
    herd.register_plugin(sampler, name=SAMPLER_NAME)  # no hooks: registered to be found
    sampler.start()


@hookimpl
def shutdown(herd: Herd) -> None:
    sampler = sampler_for(herd)
    if sampler is not None:
        sampler.stop()
        herd.unregister_plugin(sampler)
