"""Per-file work in a ``spawn`` process pool (the start method Windows and macOS use), or inline for one worker."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any


def spawn_map(fn: Callable[..., Any], jobs: Sequence[Any], *, num_processes: int, star: bool = False) -> list[Any]:
    """``[fn(job) for job in jobs]`` (``fn(*job)`` with ``star``), in order, over ``min(num_processes, len(jobs))``
    spawn workers; in this process when that is 1. ``fn`` must be a top-level (picklable) function."""
    workers = min(max(1, int(num_processes)), len(jobs))
    if workers <= 1:
        return [fn(*job) if star else fn(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.starmap(fn, jobs) if star else pool.map(fn, jobs)
