"""Torch threads for training on the CPU, chosen from how busy the machine is and re-checked every epoch.

OpenMP threads that outnumber the free cores spin-wait for each other: on a 2-core AMD EPYC (Zen 4) shared with
other jobs (load average 6-10), one SGD step of the Hippocampus 3d_fullres network (bf16, batch 2) took 0.75 s
wall with 1 torch thread and 3.0-3.5 s with 2 (CPU time 0.73 s vs 1.8-1.9 s; ``OMP_WAIT_POLICY=PASSIVE``: 2.0 s).
So the default (``cpu_threads = 0``) uses the cores that other processes leave free: the CPU count minus the
1-minute load average that is not this process's own threads, at least 1. A quiet machine gets every core.
``--set cpu_threads=N`` fixes the count. DDP ranks keep the share their launcher gave them.
"""

from __future__ import annotations

import math
import os

import torch


def threads_for_load(*, cores: int, load: float, own_threads: int) -> int:
    """Cores not taken by other processes: ``cores - round(load - own_threads)``, between 1 and ``cores``."""
    others = max(0.0, float(load) - int(own_threads))
    return max(1, min(int(cores), int(cores) - math.floor(others + 0.5)))


def choose_cpu_threads(setting: int, *, own_threads: int) -> int:
    """``setting`` when it is > 0, else :func:`threads_for_load` for this machine now."""
    if int(setting) < 0:
        raise ValueError(f"cpu_threads must be 0 (auto: the free cores) or a positive count, got {setting}; "
                         "fix --set cpu_threads=...")
    if int(setting) > 0:
        return int(setting)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return threads_for_load(cores=os.cpu_count() or 1, load=load, own_threads=own_threads)


def apply_cpu_threads(setting: int) -> int:
    """Set torch's intra-op thread count for the next epoch (see the module docstring); returns it."""
    current = torch.get_num_threads()
    threads = choose_cpu_threads(setting, own_threads=current)
    if threads != current:
        torch.set_num_threads(threads)
    return threads
