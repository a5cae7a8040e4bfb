"""One worker process of ``--cluster local[:N]``: a ``distributed.Worker`` started without the ``dask worker`` CLI.

:func:`run` limits the process to one thread for ITK/BLAS/OpenMP/torch *before* the task modules are imported (the
slot is the worker's single task thread), imports them (so the first task does not pay for them), then runs a
single-threaded ``distributed.Worker`` on 127.0.0.1 that offers ``MEMORY`` bytes as the ``MEMORY`` resource and
waits for the scheduler file to appear. It runs in a child forked from the calling process after that imported
``distributed`` (Linux; the child inherits the imports: ~0.3 s of CPU per worker), or as
``python -m nnseg.cluster.local_worker SCHEDULER_FILE MEMORY [MODULE ...]`` elsewhere. Compared with ``dask worker
--no-nanny`` it also skips the command-line layer (click and its preload validation): on a busy 2-core machine those
imports were most of a worker's start. Workers on other machines are started with the real ``dask worker`` command
(see the README).
"""

from __future__ import annotations

import asyncio
import importlib
import sys

DEATH_TIMEOUT_S = 60  # a worker whose scheduler is gone for this long exits (no orphans)


async def _serve(scheduler_file: str, memory: int) -> None:
    from distributed import Worker

    from nnseg.cluster.resources import MEMORY

    async with Worker(scheduler_file=scheduler_file, nthreads=1, host="127.0.0.1", dashboard=False,
                      memory_limit=memory, resources={MEMORY: memory}, death_timeout=DEATH_TIMEOUT_S) as worker:
        await worker.finished()


def run(scheduler_file: str, memory: int, modules: tuple[str, ...] = ()) -> None:
    """The worker's life: one thread, the task modules, then serve until the scheduler closes it."""
    import logging

    import dask
    import distributed  # noqa: F401 - its import sets the logging levels, so quieten them after it

    from nnseg.fingerprint.pool import limit_threads
    from nnseg.parallel import die_with_parent

    die_with_parent()  # a forked child: exit with the caller (a `python -m` one: the death timeout)
    limit_threads()
    # quiet, and no statistical profiler (it samples the task thread every 10 ms for a dashboard view)
    dask.config.set({"distributed.worker.profile.enabled": False})
    logging.getLogger("distributed").setLevel(logging.ERROR)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the task importing it again reports the real error
            pass
    asyncio.run(_serve(scheduler_file, memory))


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[1].isdigit():
        raise SystemExit("usage: python -m nnseg.cluster.local_worker SCHEDULER_FILE MEMORY_BYTES [MODULE ...]")
    run(argv[0], int(argv[1]), tuple(argv[2:]))


if __name__ == "__main__":
    main(sys.argv[1:])
