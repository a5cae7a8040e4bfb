"""A real Dask cluster for tests: a ``dask scheduler`` and worker processes on 127.0.0.1, started and killed here.

Workers run without a nanny (``--no-nanny``), so SIGKILL ends the process that runs the task (nothing restarts it
behind the test's back); :meth:`DaskProcesses.restart` starts it again when a test wants two workers back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
WORKER_MEMORY = 4e9


def dask_cli() -> Path:
    exe = BIN / "dask"
    if not exe.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dask CLI is missing ({exe}); install nnseg[dask]")
        pytest.skip(f"the dask CLI is missing ({exe}); pip install nnseg[dask]")
    return exe


class DaskProcesses:
    def __init__(self, folder: Path, env: dict[str, str], workers: int = 2) -> None:
        self.folder, self.env, self.exe = folder, env, dask_cli()
        self.scheduler_file = folder / "scheduler.json"
        with open(folder / "scheduler.log", "w") as log:  # the child keeps its own copy of the descriptor
            self.scheduler = subprocess.Popen(
                [str(self.exe), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--no-show",
                 "--scheduler-file", str(self.scheduler_file)], env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 60
        while not self.scheduler_file.is_file() and time.time() < deadline:
            time.sleep(0.2)
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        self.workers: list[subprocess.Popen[bytes]] = [self._start(i) for i in range(workers)]
        self.wait_for_workers(workers)

    def _start(self, i: int) -> subprocess.Popen[bytes]:
        with open(self.folder / f"worker{i}.log", "a") as log:
            return subprocess.Popen([str(self.exe), "worker", self.address, "--no-nanny", "--nworkers", "1",
                                     "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}",
                                     "--resources", f"MEMORY={WORKER_MEMORY:.0f}", "--memory-limit", "0"],
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, i: int) -> str:
        return (self.folder / f"worker{i}.log").read_text(errors="replace")

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        """Until the scheduler's log says ``n`` workers registered since the last call (counts 'Register worker')."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = (self.folder / "scheduler.log").read_text(errors="replace")
            alive = text.count("Register worker") - text.count("Remove worker")
            if alive >= n:
                return
            time.sleep(0.3)
        raise TimeoutError(f"{n} Dask workers did not register in {timeout} s:\n{text[-3000:]}")

    def kill(self, i: int) -> None:
        self.workers[i].send_signal(signal.SIGKILL)
        self.workers[i].wait(30)

    def restart(self, i: int) -> None:
        if self.workers[i].poll() is None:
            return
        self.workers[i] = self._start(i)
        self.wait_for_workers(len(self.workers))

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)


def run_killing_a_worker(cmd: list[str], env: dict[str, str], cluster: DaskProcesses, ready, *,  # type: ignore[no-untyped-def]
                         timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``cmd``; as soon as ``ready()`` returns a worker index, SIGKILL that worker. Returns the finished process
    and the killed worker's index (-1: the command ended first)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = -1, time.time() + timeout
    while proc.poll() is None and killed < 0 and time.time() < deadline:
        index = ready()
        if index is not None:
            cluster.kill(index)
            killed = index
        time.sleep(0.1)
    out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), killed
