"""Per-file work in a ``spawn`` process pool (the start method Windows and macOS use), or inline for one worker.

Every worker nnseg starts dies with the process that started it (:func:`die_with_parent`, installed by
:func:`worker_initializer`): on Linux the kernel kills it when its parent dies (``PR_SET_PDEATHSIG``), and on every
platform a thread waits on the parent's sentinel and exits the worker when the parent is gone. So a SIGKILL of a
command leaves no worker behind, and with the workers gone multiprocessing's resource tracker (whose pipe they share)
exits too. At a normal exit the resource tracker is stopped before the interpreter ends
(:func:`spawn_context` registers that), so no process of nnseg's outlives the command.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_SHARED_POOL: ContextVar[Any] = ContextVar("nnseg_shared_spawn_pool", default=None)


def spawn_map(fn: Callable[..., Any], jobs: Sequence[Any], *, num_processes: int, star: bool = False) -> list[Any]:
    """``[fn(job) for job in jobs]`` (``fn(*job)`` with ``star``), in order, over ``min(num_processes, len(jobs))``
    spawn workers; in this process when that is 1. ``fn`` must be a top-level (picklable) function."""
    workers = min(max(1, int(num_processes)), len(jobs))
    if workers <= 1:
        return [fn(*job) if star else fn(job) for job in jobs]
    shared = _SHARED_POOL.get()
    if shared is not None:
        return shared.starmap(fn, jobs) if star else shared.map(fn, jobs)
    with spawn_pool(workers) as pool:
        return pool.starmap(fn, jobs) if star else pool.map(fn, jobs)


@contextmanager
def shared_spawn_pool(*, num_processes: int, num_jobs: int) -> Iterator[None]:
    """Inside the block, every :func:`spawn_map` that would start a pool runs on this one pool of
    ``min(num_processes, num_jobs)`` workers instead: for a series of maps over the same files (each pool start
    spawns interpreters that import numpy/scipy again, about a second on a small machine). One worker: no pool."""
    workers = min(max(1, int(num_processes)), num_jobs)
    if workers <= 1:
        yield
        return
    with spawn_pool(workers) as pool:
        token = _SHARED_POOL.set(pool)
        try:
            yield
        finally:
            _SHARED_POOL.reset(token)


def spawn_pool(workers: int) -> Any:
    """A pool of ``workers`` spawn processes, each started by :func:`worker_initializer` (dies with this process)."""
    return spawn_context().Pool(workers, initializer=worker_initializer, initargs=worker_initargs())


def spawn_context() -> Any:
    """The ``spawn`` multiprocessing context; the resource tracker it starts is stopped at a normal exit."""
    _stop_tracker_at_exit()
    return multiprocessing.get_context("spawn")


def worker_initargs(initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """``initargs`` for :func:`worker_initializer` (call it in the process that creates the pool)."""
    return threading.current_thread() is threading.main_thread(), initializer, tuple(initargs)


def worker_initializer(pdeathsig: bool = False, initializer: Callable[..., None] | None = None,
                       initargs: tuple[Any, ...] = ()) -> None:
    """Pool initializer: :func:`die_with_parent`, then ``initializer(*initargs)``."""
    die_with_parent(pdeathsig=pdeathsig)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(*, pdeathsig: bool = True) -> None:
    """Make this child process exit when its parent dies (no-op in a process that multiprocessing did not start).

    Args:
        pdeathsig: also ask Linux to SIGKILL this process when its parent dies. The kernel does so when the parent
            *thread* that started the child ends, so pass it only for children started from the main thread.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if pdeathsig and sys.platform.startswith("linux"):
        _set_pdeathsig()
    sentinel = parent.sentinel
    threading.Thread(target=_exit_when_gone, args=(sentinel,), name="nnseg-parent-watch", daemon=True).start()


def _exit_when_gone(sentinel: Any) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])  # ready when the parent is gone (EOF on its pipe / its process handle is signalled)
    os._exit(1)


def _set_pdeathsig() -> None:
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl (e.g. musl without it): the parent-watch thread remains
        return


@functools.cache
def _stop_tracker_at_exit() -> None:
    atexit.register(stop_resource_tracker)


def stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker if this process started it (it is restarted when needed)."""
    if os.name != "posix":
        return
    try:
        from multiprocessing import resource_tracker

        tracker = resource_tracker._resource_tracker
        stop = getattr(tracker, "_stop", None)
        if stop is not None and getattr(tracker, "_pid", None) is not None:  # started by this process
            stop()
    except Exception:  # noqa: BLE001 - best effort at exit: the tracker also ends when its pipe closes
        return
