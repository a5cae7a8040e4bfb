"""Devices and numeric precision, shared by training and prediction.

``-device cpu|cuda|mps`` behaves as in nnU-Net (CPU: all cores for torch; CUDA: one intra-op thread). Precision:
fp16 autocast on CUDA (nnU-Net's AMP), bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 elsewhere;
``fp32`` turns autocast off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import torch

PRECISIONS = ("fp32", "fp16", "bf16")
DEVICE_TYPES = ("cpu", "cuda", "mps")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_TUNED = False
_MMAP_THRESHOLD = 0  # the heap's mmap threshold set by keep_freed_memory_for_reuse (0: not set)


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has native bfloat16 arithmetic (``avx512_bf16`` or ``amx_bf16`` flags; Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def default_precision(device: torch.device | str) -> str:
    """``'fp16'`` on CUDA, ``'bf16'`` on CPUs with native bf16, else ``'fp32'``."""
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``None``/``'auto'`` -> :func:`default_precision`; otherwise validated."""
    if precision in (None, "auto"):
        return default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type == "cpu":
        raise ValueError("fp16 autocast is not supported on the CPU; use --precision bf16 or fp32")
    return precision


def autocast_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[object]:
    """A context manager running code in ``precision`` (``'fp32'``: no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def auto_device() -> str:
    """The ``auto`` device of training and prediction alike: CUDA if torch sees a GPU, else MPS (Apple), else the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str) -> torch.device:
    """``'cpu'``, ``'cuda'`` (``'cuda:1'``), ``'mps'`` or ``'auto'`` (:func:`auto_device`), checked to exist, with
    nnU-Net's thread settings applied."""
    if name == "auto":
        name = auto_device()
    kind = name.split(":")[0]
    if kind not in DEVICE_TYPES:
        raise ValueError(f"unknown device {name!r}; use auto or one of {', '.join(DEVICE_TYPES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("-device cuda was requested but torch sees no CUDA GPU; use -device cpu (or install a CUDA build of torch)")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("-device mps was requested but MPS is not available; use -device cpu")
    if kind == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    elif kind == "cuda":
        torch.set_num_threads(1)
    return torch.device(name)


def keep_freed_memory_for_reuse(largest_block: int | None = None) -> bool:
    """Let glibc's malloc reuse freed activation buffers instead of returning them to the OS after every layer.

    CPU inference allocates and frees hundreds of MB per layer; by default glibc serves such blocks with fresh ``mmap``
    pages, so every forward pass page-faults its whole working set again (measured on the Hippocampus network with
    TTA: ~580 000 page faults and 0.9 s of system time per case; CPU time per case 3.4 -> 2.2 s in fp32, 1.75 -> 1.2 s
    in bf16 with this setting). Raising the mmap and trim thresholds keeps freed memory in the heap; the price is that
    the process keeps its peak memory until it exits. Process-wide, applied once, Linux/glibc only.

    Args:
        largest_block: bytes of the largest tensor the reused work allocates (prediction: one network call's, see
            ``nnseg.predictions.inference.memory_plan.largest_call_block``): blocks up to 1.25x it (at least 256 MB) stay in
            the heap, larger ones (accumulators, export arrays) are ``mmap``-ed and go back to the OS when freed, so
            they do not fragment the heap and stay counted after they die (118-class CT: the process held 8.2 GB
            where nnU-Net's largest process held 3.9 GB). None: every block below 1 GB (training). A later call may
            raise the threshold (several models in one server), never lower it.

    Returns:
        True if the setting is active.
    """
    global _ALLOCATOR_TUNED, _MMAP_THRESHOLD
    threshold = 1 << 30 if largest_block is None else min(1 << 30, max(256 << 20, int(largest_block) * 5 // 4))
    if not sys.platform.startswith("linux") or threshold <= _MMAP_THRESHOLD:
        return _ALLOCATOR_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the defaults
        return False
    _ALLOCATOR_TUNED, _MMAP_THRESHOLD = ok, threshold if ok else _MMAP_THRESHOLD
    return ok


def release_free_heap() -> bool:
    """Give the heap's free memory back to the OS now (``malloc_trim``): after a case's network calls, so that what
    :func:`keep_freed_memory_for_reuse` keeps for the next call does not stay resident through the export (118-class
    CT: up to 2 GB). The next case's first call page-faults its working set once. Linux/glibc only."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def return_large_blocks_to_os(threshold: int = 64 << 20) -> bool:
    """Serve blocks above ``threshold`` bytes with ``mmap`` again, and give the free heap back to the OS.

    :func:`keep_freed_memory_for_reuse` keeps every block below 1 GB in the heap; with a stream of 0.1-0.6 GB slabs
    (bounded-memory prediction of large images) the heap fragments and the process held 8.8 GB where 6.8 GB were
    live (measured, 118-class CT). Network activations of one call stay below 64 MB per tensor for the patch sizes
    this is used with, so they keep the fast heap reuse. Process-wide, Linux/glibc only.

    Returns:
        True if the setting is active.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2 * int(threshold)) == 1
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return ok
