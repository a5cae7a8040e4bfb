"""One line naming this machine's CPU, printed next to every benchmark figure (figures differ between CPUs).

``cpu_line()`` gives e.g. ``CPU: AMD EPYC (x86_64), 2 cores, 1 thread/core, flags avx2 avx512f avx512_bf16, torch
capability AVX512, load 1.2``: the model name, core count, the SIMD flags that decide the kernels (AVX2, AVX-512,
native bf16 via avx512_bf16 or AMX), torch's own CPU capability when torch is already imported, and the load
average (a busy, shared machine makes wall times longer; CPU times are less affected).

Usage from a shell script: ``python bench/cpuinfo.py`` prints the line.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd",
                "sve")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str], int]:
    """(model name, flags, threads per core) from /proc/cpuinfo; ('', set(), 1) where there is none."""
    try:
        text = path.read_text()
    except OSError:
        return platform.processor() or platform.machine(), set(), 1
    model, flags, siblings, cores = "", set(), 0, 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model") and not model:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "siblings" and not siblings:
            siblings = int(value)
        elif key == "cpu cores" and not cores:
            cores = int(value)
    return model or platform.machine(), flags, max(1, siblings // cores) if siblings and cores else 1


def cpu_line() -> str:
    """The CPU description printed beside benchmark figures."""
    model, flags, per_core = _cpuinfo()
    shown = [f for f in KERNEL_FLAGS if f in flags]
    parts = [f"CPU: {model} ({platform.machine()})", f"{os.cpu_count()} cores", f"{per_core} thread/core",
             f"flags {' '.join(shown) or 'none of ' + '/'.join(KERNEL_FLAGS[:3])}"]
    if "torch" in sys.modules:
        parts.append(f"torch capability {sys.modules['torch'].backends.cpu.get_cpu_capability()}")
    if hasattr(os, "getloadavg"):
        parts.append(f"load {os.getloadavg()[0]:.1f}")
    return ", ".join(parts)


if __name__ == "__main__":
    print(cpu_line())
