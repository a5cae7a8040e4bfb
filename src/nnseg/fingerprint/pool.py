"""A spawn process pool for per-case work (fingerprint extraction, preprocessing).

``pool_map`` runs a top-level function over jobs in ``spawn`` worker processes with a bounded number of jobs in flight
(each job is one case, so memory stays bounded by the number of workers), yields results as they complete, and turns
a worker that dies (e.g. killed for lack of memory) into a clear error instead of a hang. Workers die with the
process that started them (``nnseg.parallel.die_with_parent``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from nnseg.parallel import spawn_context, worker_initargs, worker_initializer


def limit_threads() -> None:
    """One thread for ITK, BLAS/OpenMP and torch in this process (pool workers: the pool supplies the parallelism)."""
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def open_pool(num_workers: int, *, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
    """A spawn pool with single-threaded workers, to share between steps (``pool_map(..., pool=...)``); close it with
    ``shutdown()`` or use it as a context manager. Workers stay warm between steps and die with this process.

    With ``preload`` (module names) every worker starts now and imports those modules, while this process goes on
    (a worker's interpreter and imports take ~1 s: SimpleITK, scipy, blosc2); otherwise workers start on first use.
    """
    workers = max(1, int(num_workers))
    pool = ProcessPoolExecutor(workers, mp_context=spawn_context(), initializer=worker_initializer,
                               initargs=worker_initargs(_start_worker, (tuple(preload),)))
    if preload:
        for _ in range(workers):  # each submit finds no idle worker and starts one (spawn pools grow on demand)
            pool.submit(os.getpid)
    return pool


def _start_worker(modules: tuple[str, ...]) -> None:
    """Pool worker start: one thread (:func:`limit_threads`), then import ``modules`` (a failure is left for the job
    that needs the module to report)."""
    import importlib

    limit_threads()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the job importing it again raises the real error where it is handled
            pass


def pool_map(fn: Callable[[Any], Any], jobs: Sequence[Any], *, num_workers: int,
             limit: Callable[[Any], int] | None = None, initializer: Callable[..., None] = limit_threads,
             initargs: tuple[Any, ...] = (), describe: Callable[[Any], str] = str,
             pool: ProcessPoolExecutor | None = None) -> Iterator[tuple[int, Any]]:
    """``(index, fn(jobs[index]))`` in completion order, computed in a spawn pool.

    Args:
        fn: a top-level (picklable) function of one job.
        jobs: the jobs (picklable).
        num_workers: worker processes; 1 (or a single job) runs ``initializer`` and ``fn`` in this process.
        limit: the most jobs that may be in flight while ``job`` is started (default: ``num_workers``).
        initializer, initargs: run once in each worker.
        describe: names a job in the error raised when a worker dies.
        pool: an open pool (:func:`open_pool`) to use instead of starting one (``initializer`` is then not run;
            ``num_workers`` still bounds the jobs in flight); it is left open. A pool with ``map_unordered(fn, jobs)``
            (a cluster's, :class:`nnseg.cluster.tasks.DaskPool`) gets all jobs at once and bounds them itself.

    Raises:
        RuntimeError: a worker process died; the message names the jobs that were in flight.
        Any exception raised by ``fn`` (remaining jobs are cancelled; running ones finish first).
    """
    workers = max(1, min(int(num_workers), len(jobs)))
    if pool is not None and jobs and hasattr(pool, "map_unordered"):
        yield from pool.map_unordered(fn, jobs)
        return
    if pool is not None and jobs:
        yield from _submit_all(pool, fn, jobs, workers, limit, describe)
        return
    if workers == 1:
        initializer(*initargs)
        for i, job in enumerate(jobs):
            yield i, fn(job)
        return
    with ProcessPoolExecutor(workers, mp_context=spawn_context(), initializer=worker_initializer,
                             initargs=worker_initargs(initializer, initargs)) as executor:
        yield from _submit_all(executor, fn, jobs, workers, limit, describe)


def _submit_all(executor: ProcessPoolExecutor, fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int,
                limit: Callable[[Any], int] | None, describe: Callable[[Any], str]) -> Iterator[tuple[int, Any]]:
    pending: dict[Future[Any], int] = {}
    try:
        for i, job in enumerate(jobs):
            while pending and len(pending) >= min(workers, limit(job) if limit else workers):
                yield from _collect(pending, jobs, describe)
            pending[executor.submit(fn, job)] = i
        while pending:
            yield from _collect(pending, jobs, describe)
    except BaseException:
        for future in pending:
            future.cancel()
        if pending:
            wait(pending)  # running jobs finish (and clean up after themselves) before the caller cleans up
        raise


def _collect(pending: dict[Future[Any], int], jobs: Sequence[Any], describe: Callable[[Any], str]) -> Iterator[tuple[int, Any]]:
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        try:
            result = future.result()
        except BrokenProcessPool:
            in_flight = ", ".join(describe(jobs[i]) for i in sorted(pending.values()))
            raise RuntimeError(f"a worker process died while working on {in_flight}; most likely it ran out of memory. "
                               "Rerun with fewer processes (-np / -npfp); finished work is kept") from None
        index = pending.pop(future)
        yield index, result
