"""Can this machine run the installed llama-cpp-python build? Asked in a child process.

llama-cpp-python compiles llama.cpp on install, by default with `GGML_NATIVE=ON`: the
compiler targets the CPU it guessed, and llama.cpp then picks kernels for it. In a VM
that lists AMX in /proc/cpuinfo without enabling its tile state, the AMX kernels for
Q4_0/Q4_1/Q8_0 weights raise SIGILL and the whole process dies (exit 132). So the
check runs where a crash costs nothing — a child process — and compares what the build
uses (`llama_print_system_info()`) with what this CPU and kernel allow: the flags in
/proc/cpuinfo, and for AMX whether Linux grants the tile state (`arch_prctl
ARCH_REQ_XCOMP_PERM`, the request every AMX user must make first).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .settings import INSTALL_LLAMA_CPP_PYTHON, INSTALL_LLAMA_CPP_PYTHON_CUDA

#: llama.cpp's system-info names -> the /proc/cpuinfo flags they need
CPU_FLAGS: dict[str, tuple[str, ...]] = {
    "SSE3": ("pni",),
    "SSSE3": ("ssse3",),
    "AVX": ("avx",),
    "AVX2": ("avx2",),
    "F16C": ("f16c",),
    "FMA": ("fma",),
    "BMI2": ("bmi2",),
    "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f",),
    "AVX512_VBMI": ("avx512vbmi",),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
    "AMX_INT8": ("amx_int8", "amx_tile"),
}

#: runs in the child: the build's features, then whether Linux lets us use AMX tiles
PROBE = r"""
import ctypes, json, platform
import llama_cpp
info = llama_cpp.llama_print_system_info()
info = info.decode() if isinstance(info, bytes) else str(info)
amx = None
if platform.machine() == "x86_64":
    libc = ctypes.CDLL(None, use_errno=True)
    # syscall(SYS_arch_prctl=158, ARCH_REQ_XCOMP_PERM=0x1023, XFEATURE_XTILEDATA=18)
    amx = libc.syscall(158, 0x1023, 18) == 0
print(json.dumps({"version": llama_cpp.__version__, "info": info, "amx_permitted": amx}))
"""

FIX = (
    f"rebuild it portable: {INSTALL_LLAMA_CPP_PYTHON} — or, for an NVIDIA GPU: "
    f'{INSTALL_LLAMA_CPP_PYTHON_CUDA} — or use the default engine (engine = "xllamacpp")'
)


@dataclass
class NativeCheck:
    """The verdict on the installed llama-cpp-python."""

    ok: bool
    message: str
    fix: str = ""
    #: features the build uses that this machine cannot run
    unusable: list[str] = field(default_factory=list)


def build_features(info: str) -> set[str]:
    """`"CPU : AVX2 = 1 | AMX_INT8 = 1 | ..."` -> {"AVX2", "AMX_INT8"} (the ones set to 1)."""
    found = set()
    for part in info.replace("\n", "|").split("|"):
        name, _, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if name and value.strip() == "1":
            found.add(name)
    return found


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's flags (x86 `flags`, Arm `Features`), None where there is no cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def unusable_features(
    features: set[str], flags: set[str] | None, amx_permitted: bool | None
) -> list[str]:
    """Build features this machine cannot run: flags it lacks, or AMX it refuses."""
    bad = []
    for feature in sorted(features):
        needed = CPU_FLAGS.get(feature)
        if needed is None or flags is None:
            continue
        if not all(flag in flags for flag in needed):
            bad.append(f"{feature} (not in /proc/cpuinfo)")
        elif feature.startswith("AMX") and amx_permitted is False:
            bad.append(f"{feature} (listed by the CPU, but the kernel refuses the AMX tile state)")
    return bad


def check_llama_cpp_python(timeout: float = 60.0) -> NativeCheck:
    """Run PROBE in a child process and judge the build; never raises."""
    try:
        child = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return NativeCheck(False, f"importing llama-cpp-python took over {timeout:g}s", FIX)
    if child.returncode == -4 or child.returncode == 132:  # SIGILL
        return NativeCheck(
            False,
            "llama-cpp-python dies with SIGILL (illegal instruction) on import: it was "
            "compiled for a CPU this one is not",
            FIX,
        )
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return NativeCheck(False, f"llama-cpp-python does not import: {last}", FIX)
    report = json.loads(child.stdout.strip().splitlines()[-1])
    bad = unusable_features(build_features(report["info"]), cpu_flags(), report["amx_permitted"])
    version = report["version"]
    if bad:
        return NativeCheck(
            False,
            f"llama-cpp-python {version} was built for CPU features this machine cannot run: "
            f"{', '.join(bad)} — its first call would die with SIGILL",
            FIX,
            bad,
        )
    return NativeCheck(True, f"llama-cpp-python {version} runs on this CPU")


_VERDICT: NativeCheck | None = None


def cached_check() -> NativeCheck:
    """The verdict, checked once per process (a child process costs about a second)."""
    global _VERDICT
    if _VERDICT is None:
        _VERDICT = check_llama_cpp_python()
    return _VERDICT
