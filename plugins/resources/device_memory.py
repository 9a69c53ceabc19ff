"""Free memory per device: each GPU through NVML when there is one, else system RAM.

pynvml (the `nvidia-ml-py` package, extra `gpu`) is imported inside `read_devices`
only; a machine without the package, the driver or a GPU falls back to RAM from
psutil minus a reserve, and says why in `Device.note`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

GiB = 1024**3


@dataclass
class Device:
    """One place a model's layers can live."""

    name: str
    kind: str  # "gpu" or "cpu"
    index: int
    total: int
    free: int
    note: str = ""


def nvidia_driver_absent() -> bool:
    """True when this is Linux without the NVIDIA kernel driver: NVML cannot work, and
    asking it costs ~0.5 s (its library search), so every caller skips it."""
    return sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia")


def read_gpus() -> tuple[list[Device], str]:
    """The NVIDIA GPUs NVML reports, and why there are none when the list is empty."""
    if nvidia_driver_absent():
        return [], "no NVIDIA driver (/proc/driver/nvidia is absent)"
    try:
        import pynvml
    except ImportError:
        return [], 'no NVML (pip install "modelherd[gpu]" on a machine with an NVIDIA GPU)'
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / …
        return [], f"NVML unavailable: {exc}"
    gpus: list[Device] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name: Any = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            gpus.append(Device(str(name), "gpu", index, int(info.total), int(info.free)))
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return gpus, "" if gpus else "NVML found no GPU"


def read_ram(reserve: int = 2 * GiB) -> Device:
    """System RAM available to a new model: psutil's `available` minus a reserve."""
    import psutil

    vm = psutil.virtual_memory()
    return Device(
        "system RAM",
        "cpu",
        0,
        int(vm.total),
        max(0, int(vm.available) - reserve),
        note=f"available minus {reserve / GiB:g} GiB reserve",
    )


def read_devices(reserve: int = 2 * GiB) -> tuple[list[Device], Device, str]:
    """(GPUs, RAM, why no GPU) — the GPU list is empty on CPU-only machines."""
    gpus, why = read_gpus()
    return gpus, read_ram(reserve), why
