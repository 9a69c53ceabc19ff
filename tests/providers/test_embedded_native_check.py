"""`herd doctor`'s check of a llama-cpp-python build, and the refusal to load one this
machine cannot run. The builds here are stand-in `llama_cpp` modules put first on the
child's path: one that dies with SIGILL on import (what a native build does in an AMX
VM), one that reports AMX kernels, one that reports AVX2 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from modelherd.plugins.providers.llamacpp import native_check
from modelherd.plugins.providers.llamacpp.native_check import (
    build_features,
    check_llama_cpp_python,
    cpu_flags,
    unusable_features,
)

AMX_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
PORTABLE_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | "
)


def fake_build(tmp_path: Path, body: str) -> Path:
    package = tmp_path / "site" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    return tmp_path / "site"


def reporting(info: str) -> str:
    return f"__version__ = '9.9.9'\ndef llama_print_system_info():\n    return {info!r}.encode()\n"


def test_build_features_are_the_flags_set_to_one() -> None:
    assert build_features(AMX_BUILD) == {"SSE3", "AVX", "AVX2", "AVX512", "AMX_INT8", "LLAMAFILE"}
    assert build_features("CPU : AVX2 = 0 | NEON = 1 |") == {"NEON"}


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse3 avx avx2 avx512f\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse3", "avx", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "absent") is None


def test_amx_the_kernel_refuses_is_unusable_even_when_the_cpu_lists_it() -> None:
    features = build_features(AMX_BUILD)
    flags = {"pni", "avx", "avx2", "avx512f", "amx_int8", "amx_tile"}
    assert unusable_features(features, flags, amx_permitted=True) == []
    assert unusable_features(features, flags, amx_permitted=False) == [
        "AMX_INT8 (listed by the CPU, but the kernel refuses the AMX tile state)"
    ]
    assert unusable_features(features, flags - {"amx_int8", "amx_tile"}, True) == [
        "AMX_INT8 (not in /proc/cpuinfo)"
    ]


def test_a_build_that_dies_with_sigill_is_caught_in_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = fake_build(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    verdict = check_llama_cpp_python()
    assert not verdict.ok
    assert verdict.message.startswith("llama-cpp-python dies with SIGILL (illegal instruction)")
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF" python3 -m pip install' in verdict.fix
    assert 'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF"' in verdict.fix


def test_a_build_using_features_this_machine_lacks_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a feature no x86 or Arm CPU reports in cpuinfo, so the verdict is the same anywhere
    info = AMX_BUILD.replace("AMX_INT8", "AVX512_BF16") + "AVX512_VBMI = 1 |"
    monkeypatch.setenv("PYTHONPATH", str(fake_build(tmp_path, reporting(info))))
    monkeypatch.setattr(native_check, "cpu_flags", lambda: {"pni", "avx", "avx2"})
    verdict = check_llama_cpp_python()
    assert not verdict.ok
    assert verdict.message == (
        "llama-cpp-python 9.9.9 was built for CPU features this machine cannot run: "
        "AVX512 (not in /proc/cpuinfo), AVX512_BF16 (not in /proc/cpuinfo), "
        "AVX512_VBMI (not in /proc/cpuinfo) — its first call would die with SIGILL"
    )


def test_a_portable_build_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(fake_build(tmp_path, reporting(PORTABLE_BUILD))))
    monkeypatch.setattr(
        native_check, "cpu_flags", lambda: {"pni", "ssse3", "avx", "avx2", "f16c", "fma"}
    )
    verdict = check_llama_cpp_python()
    assert verdict.ok and verdict.message == "llama-cpp-python 9.9.9 runs on this CPU"


def test_doctor_reports_the_bad_build_and_herd_survives(tmp_path: Path) -> None:
    """End to end: `herd doctor` on a config whose alias uses llama-cpp-python, with a
    build that dies with SIGILL; herd itself must not die (exit 1 for the problem)."""
    site = fake_build(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    config = tmp_path / "plugins.toml"
    config.write_text(
        f'[herd]\ndefault_model = "fast"\n\n[models.fast]\nprovider = "llamacpp"\n'
        f'engine = "llama-cpp-python"\npath = "{gguf}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "modelherd.cli", "--config", str(config), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert out.returncode == 1, out.stderr
    findings = {f["area"]: f for f in json.loads(out.stdout)}
    fast = findings["model fast"]
    assert fast["level"] == "error"
    assert fast["message"].startswith("llama-cpp-python dies with SIGILL")
    assert "-DGGML_NATIVE=OFF" in fast["fix"]
