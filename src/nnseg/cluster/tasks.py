"""Submitting nnseg's per-case / per-fold functions as Dask tasks, with retries, resources and a progress bar.

Every task function nnseg submits is idempotent and writes its outputs under temporary names that are renamed when
complete, so a task that dies with its worker (Dask reruns it elsewhere, up to ``distributed.scheduler.allowed-failures``
times) or a rerun of the whole command never leaves a truncated or duplicated output.

A task fails alone: the other tasks run to the end and their outputs are kept; the failures are reported together
afterwards, one line naming each (:class:`TasksFailed`). A ``ValueError`` (nnseg's error for a bad input: an
unreadable file, a case refused by the input checks) is the same on every try, so the task returns it as a
:class:`Failure` instead of raising, and Dask does not rerun it; other errors (out of memory, a lost worker) are
retried.

:class:`DaskPool` looks like the process pools of :mod:`nnseg.fingerprint.pool` (``map_unordered(fn, jobs)``
yielding ``(index, result)``), so fingerprinting and preprocessing run on the cluster unchanged.
"""

from __future__ import annotations

import functools
import queue
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nnseg.cluster.connect import MEMORY, require_dask, worker_resources
from nnseg.cluster.memory import fit_to_workers
from nnseg.fingerprint.pool import limit_threads

DEFAULT_RETRIES = 2
DETERMINISTIC_ERRORS = (ValueError,)  # a bad input: failing again on every try, so never retried


@dataclass(frozen=True)
class Failure:
    """A task that failed for good: what it returns instead of raising one of :data:`DETERMINISTIC_ERRORS` (Dask
    reruns a task that raises), or what :func:`outcome` makes of one that failed on every try."""

    message: str


class TasksFailed(RuntimeError):
    """Some tasks failed for good while the others finished (their outputs written): one line naming each."""

    def __init__(self, failed: Mapping[str, str], *, total: int, what: str, hint: str = "") -> None:
        self.failed = dict(failed)
        details = "; ".join(f"{name}: {one_line(message).rstrip('.')}" for name, message in sorted(self.failed.items()))
        super().__init__(f"{len(self.failed)} of {total} {what}(s) failed, the other {total - len(self.failed)} "
                         f"finished. {details}.{hint}")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def refusing(fn: Callable[[Any], Any], job: Any) -> Any:
    """``fn(job)``, or :class:`Failure` for a deterministic error (worker side: not retried, no "Compute Failed")."""
    try:
        return fn(job)
    except DETERMINISTIC_ERRORS as e:
        return Failure(one_line(e))


def single_threaded(fn: Callable[[Any], Any], job: Any) -> Any:
    """``fn(job)`` (see :func:`refusing`) with one thread for ITK/BLAS/torch (a worker thread is one slot of the
    cluster)."""
    limit_threads()
    return refusing(fn, job)


def memory_capacities(client: Any) -> dict[str, float | None]:
    """``{worker: MEMORY}`` (None for a worker that advertises none)."""
    return {addr: res.get(MEMORY) for addr, res in worker_resources(client).items()}


def task_resources(client: Any, *, memory: int | None = None, gpu: bool = False,
                   capacities: Mapping[str, float | None] | None = None) -> dict[str, float] | None:
    """The Dask ``resources=`` of a task: ``MEMORY`` fitted to the workers (see :func:`fit_to_workers`), ``GPU: 1``."""
    out: dict[str, float] = {}
    if memory is not None:
        fitted = fit_to_workers(memory, memory_capacities(client) if capacities is None else capacities)
        if fitted is not None:
            out[MEMORY] = fitted
    if gpu:
        out["GPU"] = 1
    return out or None


def explain_failure(error: BaseException) -> str:
    """The message of a task's error; a lost-worker error (``KilledWorker``) says what to do."""
    if type(error).__name__ == "KilledWorker":
        return (f"every worker that ran it died ({error}); most likely it ran out of memory. Give the workers more "
                "memory (or lower their MEMORY resource so fewer tasks share one) and rerun: finished work is kept")
    return one_line(error) or type(error).__name__


def outcome(future: Any) -> Any:
    """The result of a finished future, or a :class:`Failure` with the error of one that failed for good."""
    try:
        return future.result()
    except Exception as e:  # noqa: BLE001 - any task error: that task fails alone, reported at the end
        return Failure(explain_failure(e))


class DaskPool:
    """Per-case jobs as Dask tasks: :meth:`map_unordered` runs ``single_threaded(fn, job)`` for every job (what
    :func:`nnseg.fingerprint.pool.pool_map` uses when handed this pool).

    Args:
        client: a ``distributed.Client``.
        memory: bytes one job needs (see :mod:`nnseg.cluster.memory`), or None for no ``MEMORY`` resource.
        retries: reruns of a task that raised (a task lost with its worker is rerun regardless).
        in_flight: the jobs in flight the caller reports (all are submitted at once; the resources bound them).
        failure_hint: appended to the :class:`TasksFailed` message (what to do about the failed jobs).
    """

    def __init__(self, client: Any, *, memory: Callable[[Any], int] | None = None, retries: int = DEFAULT_RETRIES,
                 in_flight: int | None = None, failure_hint: str = "") -> None:
        self.client, self.memory, self.retries, self.failure_hint = client, memory, retries, failure_hint
        self.capacities: dict[str, float | None] = {}  # of the workers up when the first jobs are sized
        threads = sum(int(w.get("nthreads", 1)) for w in client.scheduler_info()["workers"].values())
        self.in_flight = in_flight or max(32, 8 * threads)

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, fn(jobs[index]))`` as tasks finish; all jobs are submitted up front in a few growing parts (one
        ``client.map`` per part and distinct ``MEMORY`` resource: a handful of messages to the scheduler instead of
        one per job, and no round trip per job; the resources, not a window of jobs in flight, keep large cases
        apart).

        Raises:
            TasksFailed: after every other job finished, naming the jobs that failed (see :func:`outcome`).
        """
        if not self.capacities:
            self.capacities = memory_capacities(self.client)  # waits for the first worker
        names = [str(getattr(job, "identifier", "job")) for job in jobs]
        futures: dict[Any, int] = {}
        stem, tag = getattr(fn, "__name__", "task"), uuid.uuid4().hex[:8]
        for part in _growing_parts(len(jobs), first=max(4, 2 * len(self.capacities))):
            for res_items, indices in self._by_resources(jobs, part).items():
                submitted = self.client.map(functools.partial(single_threaded, fn), [jobs[i] for i in indices],
                                            key=[f"{stem}-{names[i]}-{tag}-{i}" for i in indices],
                                            resources=dict(res_items) or None, retries=self.retries, pure=False)
                futures.update(zip(submitted, indices))
        failed: dict[str, str] = {}
        try:
            for batch in _gathered_batches(list(futures)):
                good = [f for f in batch if f.status == "finished"]
                results = [*zip(good, self.client.gather(good)),
                           *((f, outcome(f)) for f in batch if f.status != "finished")]
                for future, result in results:
                    if isinstance(result, Failure):
                        failed[names[futures[future]]] = result.message
                    else:
                        yield futures[future], result
        finally:
            self.client.cancel([f for f in futures if not f.done()])
        if failed:
            raise TasksFailed(failed, total=len(jobs), what="case", hint=self.failure_hint)

    def _by_resources(self, jobs: Sequence[Any], indices: Iterable[int]) -> dict[tuple[tuple[str, float], ...], list[int]]:
        groups: dict[tuple[tuple[str, float], ...], list[int]] = {}
        for i in indices:
            res = task_resources(self.client, memory=self.memory(jobs[i]) if self.memory else None,
                                 capacities=self.capacities)
            groups.setdefault(tuple(sorted((res or {}).items())), []).append(i)
        return groups


def _gathered_batches(futures: Sequence[Any], *, every_s: float = 0.1) -> Iterator[list[Any]]:
    """``futures`` as they finish, in groups worth one ``gather`` each: what finishes within ``every_s`` of the first
    of a group, so thousands of short tasks cost tens of round trips instead of one each, and no result waits more
    than ``every_s``."""
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    left = len(futures)
    while left:
        group = [finished.get()]
        deadline = time.monotonic() + every_s
        while len(group) < left and (wait := deadline - time.monotonic()) > 0:
            try:
                group.append(finished.get(timeout=wait))
            except queue.Empty:
                break
        left -= len(group)
        yield group


def _growing_parts(n: int, *, first: int) -> Iterator[range]:
    """``range(n)`` in parts of ``first``, ``2 x first``, ``4 x first``, ...: the workers start on the first jobs while
    the estimates of the next ones are made (reading image headers), with a handful of messages in all."""
    start, size = 0, max(1, first)
    while start < n:
        yield range(start, min(n, start + size))
        start, size = start + size, size * 2


def run_tasks(client: Any, fn: Callable[[Any], Any], jobs: Sequence[Any], *, names: Sequence[str],
              resources: Sequence[dict[str, float] | None], retries: int = DEFAULT_RETRIES, desc: str = "tasks",
              what: str = "task", hint: str = "", progress: bool = True) -> Iterator[tuple[int, Any]]:
    """Submit ``fn(job)`` for every job and yield ``(index, result)`` as tasks finish, with a tqdm bar on stderr.

    Raises:
        TasksFailed: after every other task finished, naming each ``what`` that failed for good (a bad input at
            once, see :func:`refusing`; another error after ``retries``; a lost worker explained, see
            :func:`explain_failure`), followed by ``hint``.
    """
    distributed = require_dask()
    futures = {client.submit(refusing, fn, job, key=f"{desc}-{name}-{uuid.uuid4().hex[:8]}", resources=res,
                             retries=retries, pure=False): i
               for i, (job, name, res) in enumerate(zip(jobs, names, resources))}
    from tqdm import tqdm

    failed: dict[str, str] = {}
    try:
        with tqdm(total=len(jobs), desc=desc, unit=what, disable=not progress, file=sys.stderr) as bar:
            for future in distributed.as_completed(futures):
                i = futures[future]
                result = outcome(future)
                bar.update(1)
                if isinstance(result, Failure):
                    failed[names[i]] = result.message
                else:
                    yield i, result
    finally:
        client.cancel([f for f in futures if not f.done()])
    if failed:
        raise TasksFailed(failed, total=len(jobs), what=what, hint=hint)
