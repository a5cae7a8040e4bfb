"""Connect to a Dask cluster from a ``--cluster`` value and describe its workers.

Values:

* ``local`` or ``local:N``: a scheduler in this process and N single-threaded worker processes on this machine
  (default: the CPU count), each advertising ``MEMORY`` = its share of the machine's RAM (see
  :mod:`nnseg.cluster.memory`);
* ``tcp://host:port``: a running ``dask scheduler`` (workers started with e.g.
  ``dask worker tcp://host:8786 --nthreads 1 --resources "MEMORY=16e9"``);
* a path ending in ``.json``: the scheduler file written by ``dask scheduler --scheduler-file`` or dask-jobqueue.

Example:
    >>> parse_cluster("local:2")
    ('local', 2)
    >>> parse_cluster("tcp://127.0.0.1:8786")
    ('address', 'tcp://127.0.0.1:8786')
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from nnseg.cluster.resources import GPU, MEMORY

__all__ = ["GPU", "MEMORY", "open_client", "parse_cluster", "require_dask", "worker_resources"]

WAIT_FOR_WORKERS_S = 600.0


def require_dask() -> Any:
    """The ``distributed`` module, or a clear error saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise RuntimeError("--cluster needs Dask: pip install nnseg[dask] (installs dask, distributed and "
                           "dask-jobqueue)") from None
    return distributed


def parse_cluster(value: str) -> tuple[str, Any]:
    """``('local', N or None)``, ``('address', 'tcp://...')`` or ``('file', path)``.

    Raises:
        ValueError: anything else (the message lists the accepted forms).
    """
    text = value.strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and (not count.isdigit() or int(count) < 1):
            raise ValueError(f"--cluster {value!r}: the worker count after 'local:' must be a positive integer")
        return "local", int(count) if count else None
    if "://" in text:
        return "address", text
    if text.endswith(".json"):
        if not os.path.isfile(text):
            raise ValueError(f"--cluster {value!r}: scheduler file not found; start the scheduler with "
                             "--scheduler-file first")
        return "file", text
    raise ValueError(f"--cluster {value!r} is not understood; use local, local:N, tcp://HOST:PORT or a scheduler "
                     "file SCHEDULER.json")


class LocalWorkers:
    """A scheduler in this process and N worker processes on 127.0.0.1 (``--cluster local:N``).

    Each worker is one process without a nanny (:mod:`nnseg.cluster.local_worker`; a nanny per worker cost ~1.5 s of
    CPU to start and 4 s to stop a worker that imported torch); the workers are killed on :meth:`close` (every nnseg
    output is written atomically).
    """

    def __init__(self, workers: int | None, *, preload: Sequence[str] = ()) -> None:
        import psutil

        self.n = workers or os.cpu_count() or 1
        memory = int(psutil.virtual_memory().total // self.n)
        self.folder = tempfile.mkdtemp(prefix="nnseg_dask_")
        scheduler_file = os.path.join(self.folder, "scheduler.json")
        # the workers start before the scheduler and wait for its file: their imports (the task modules) overlap
        # with this process starting the scheduler
        self.processes: list[Any] = []
        try:
            if _can_fork():
                distributed = require_dask()  # imported once here, inherited by the forked workers
                self.processes = _fork_workers(self.n, scheduler_file, memory, preload)
            else:
                self.processes = [subprocess.Popen(_worker_command(scheduler_file, memory, preload),
                                                   stdin=subprocess.DEVNULL) for _ in range(self.n)]
                distributed = require_dask()
            # its INFO lines (with a traceback when the killed workers' connections close) are not for nnseg's users
            logging.getLogger("distributed").setLevel(logging.WARNING)
            self.cluster = distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                                    scheduler_port=0,
                                                    scheduler_kwargs={"scheduler_file": scheduler_file})
        except BaseException:
            self._stop_workers()
            raise

    def _stop_workers(self) -> None:
        for process in self.processes:
            process.kill()  # a no-op for one that already ended (subprocess.Popen and multiprocessing.Process alike)
        for process in self.processes:
            process.wait() if isinstance(process, subprocess.Popen) else process.join()
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        self._stop_workers()
        self.cluster.close()


def _can_fork() -> bool:
    """Fork the workers from this process: on Linux, while it runs no other thread and has not imported torch (whose
    thread pools do not survive a fork); elsewhere they are started as new interpreters."""
    return sys.platform.startswith("linux") and threading.active_count() == 1 and "torch" not in sys.modules


def _fork_workers(n: int, scheduler_file: str, memory: int, preload: Sequence[str]) -> list[Any]:
    import multiprocessing

    from nnseg.cluster import local_worker

    context = multiprocessing.get_context("fork")
    sys.stdout.flush()  # a child would print what this process had buffered a second time
    sys.stderr.flush()
    processes = [context.Process(target=local_worker.run, args=(scheduler_file, memory, tuple(preload)),
                                 name=f"nnseg-dask-worker-{i}") for i in range(n)]
    for process in processes:
        process.start()
    return processes


def _worker_command(scheduler_file: str, memory: int, preload: Sequence[str]) -> list[str]:
    """One single-threaded worker of ``memory`` bytes importing ``preload``; orphans end on their own (death timeout)."""
    return [sys.executable, "-m", "nnseg.cluster.local_worker", scheduler_file, str(memory), *preload]


@contextmanager
def open_client(value: str, *, announce: bool = True, preload: Sequence[str] = ()) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--cluster value`` (a LocalCluster is closed on leaving); ``preload``: modules
    the workers of ``local`` import while starting (those the tasks need; never torch for per-case work).

    Raises:
        RuntimeError: the scheduler cannot be reached, or does not answer within :func:`connect_timeout_s` in all.
    """
    kind, target = parse_cluster(value)
    cluster = LocalWorkers(target, preload=preload) if kind == "local" else None
    distributed = require_dask()
    try:
        if cluster is not None:  # tasks start with the first worker; the others join as they come up
            client = distributed.Client(cluster.cluster, direct_to_workers=True)
        else:
            client = _remote_client(distributed, value, _scheduler_address(target) if kind == "file" else target)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        if cluster is None:  # local workers are up within a second: the caller prepares its jobs meanwhile
            wait_for_a_worker(client, value)
        if announce:
            announce_cluster(client, starting=cluster.n if cluster is not None else None)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def connect_timeout_s() -> float:
    """The total time to reach a scheduler and hear back: Dask's ``distributed.comm.timeouts.connect`` (30 s unless
    configured, e.g. ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s``)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds"))


def _scheduler_address(path: str) -> str:
    """The address in a scheduler file (``dask scheduler --scheduler-file``)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return str(json.load(f)["address"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--cluster {path}: not a Dask scheduler file ({type(e).__name__}: {e}); pass the file the "
                         "scheduler wrote with --scheduler-file") from None


def _remote_client(distributed: Any, value: str, address: str) -> Any:
    """A client of the running scheduler at ``address``, within one deadline: Dask's own connect timeout does not
    cover the handshake, so a server that accepts the connection and then says nothing would hang it for ever."""
    import time

    timeout = connect_timeout_s()
    start = time.monotonic()
    _handshake(distributed, value, address, timeout)
    try:
        return distributed.Client(address, timeout=max(1.0, timeout - (time.monotonic() - start)))
    except (OSError, TimeoutError) as e:
        raise RuntimeError(f"cannot reach the Dask scheduler {value!r} ({e}); start it (dask scheduler) or check "
                           "the address") from None


def _handshake(distributed: Any, value: str, address: str, timeout: float) -> None:
    """Open a connection to ``address`` and complete Dask's handshake within ``timeout`` seconds, in all."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    tls = distributed.Security().get_connection_args("client")  # Dask's configured TLS settings, as the client's

    async def talk() -> None:
        comm = await asyncio.wait_for(distributed.comm.connect(address, timeout=timeout, **tls), timeout)
        await comm.close()

    with ThreadPoolExecutor(1, thread_name_prefix="nnseg-dask-connect") as pool:  # also beside a running loop
        try:
            pool.submit(asyncio.run, talk()).result()
        except (asyncio.TimeoutError, TimeoutError):
            raise RuntimeError(f"the Dask scheduler {value!r} did not answer within {timeout:.0f} s (it may accept "
                               "connections and never speak: not a Dask scheduler, or one that hangs); check the "
                               "address (dask scheduler prints it) and the scheduler's log. The time limit is "
                               "Dask's distributed.comm.timeouts.connect") from None
        except OSError as e:
            raise RuntimeError(f"cannot reach the Dask scheduler {value!r} ({e}); start it (dask scheduler) or "
                               "check the address") from None
        except Exception as e:  # noqa: BLE001 - a server that answers something else than Dask's handshake
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise RuntimeError(f"{value!r} did not answer as a Dask scheduler (reading its answer failed: {reason}); "
                               "check the address (dask scheduler prints it)") from None


def wait_for_a_worker(client: Any, value: str, timeout_s: float = WAIT_FOR_WORKERS_S, *, say: bool = True) -> None:
    """Block until one worker is connected (batch-system workers may still be queued), so tasks are sized by them."""
    if client.scheduler_info()["workers"]:
        return
    if say:
        print(f"nnseg: waiting up to {timeout_s:.0f} s for the first worker of {value}", file=sys.stderr)
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        raise RuntimeError(f"no Dask worker joined {value} within {timeout_s:.0f} s; start workers (dask worker "
                           f"{client.scheduler.address}) or check the batch jobs of dask-jobqueue") from None


def worker_resources(client: Any) -> dict[str, dict[str, float]]:
    """``{worker address: {resource: amount}}`` of the workers connected now (waiting for the first one)."""
    wait_for_a_worker(client, client.scheduler.address, say=False)  # open_client said it for remote clusters
    return {addr: dict(w.get("resources") or {}) for addr, w in client.scheduler_info()["workers"].items()}


def announce_cluster(client: Any, *, starting: int | None = None) -> None:
    """Print the workers, their resources and the dashboard link on stderr (``starting``: local workers started)."""
    workers = client.scheduler_info()["workers"]
    threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
    joined = (f"{starting} local single-threaded worker process(es) ({len(workers)} up)" if starting
              else f"{len(workers)} worker(s), {threads} thread(s)")
    print(f"nnseg: Dask cluster {client.scheduler.address}: {joined}", file=sys.stderr)
    try:
        import bokeh  # noqa: F401 - the dashboard needs it
        print(f"nnseg: dashboard {client.dashboard_link}", file=sys.stderr)
    except ImportError:
        print("nnseg: no dashboard (pip install bokeh to get one)", file=sys.stderr)
    if workers and not all(MEMORY in (w.get("resources") or {}) for w in workers.values()):
        print(f"nnseg: some workers advertise no {MEMORY} resource; tasks are not sized by memory (start workers "
              f"with --resources \"{MEMORY}=<bytes>\" to keep large cases apart)", file=sys.stderr)
