"""The server's memory budget is shared by its workers: running jobs never hold more than the budget together, a job
that fits but not beside the running ones waits (queued, cancellable) instead of being refused, and what a job held
is given back however it ends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from nnseg.serve.automatic.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobQueue
from nnseg.serve.memory import ServerMemory
from nnseg.serve.automatic.models import CaseError

GB = 2**30


def test_reservations_never_exceed_the_budget() -> None:
    memory = ServerMemory(10 * GB, "test")
    assert memory.try_reserve(6 * GB) == 6 * GB and memory.try_reserve(5 * GB) is None and memory.used == 6 * GB
    assert memory.try_reserve(4 * GB) == 4 * GB and memory.try_reserve(1) is None
    memory.release(6 * GB)
    assert memory.used == 4 * GB and memory.try_reserve(50 * GB) is None  # clamped to the budget: waits for all of it
    memory.release(4 * GB)
    assert memory.try_reserve(50 * GB) == 10 * GB
    assert memory.policy().budget == 10 * GB
    with pytest.raises(ValueError, match="must be positive"):
        ServerMemory(0, "test")


class _Model:
    """Stands in for a ServedModel (predict_case is patched)."""


def _queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory: ServerMemory, workers: int) -> tuple:
    running: list[str] = []
    peak = [0]
    release = {"fail": threading.Event(), "ok": threading.Event()}
    lock = threading.Lock()

    def fake_predict(model, inputs, output, *, progress, cancelled):  # noqa: ANN001, ANN202
        name = inputs[0].read_text()
        with lock:
            running.append(name)
            peak[0] = max(peak[0], memory.used)
        try:
            while not release["ok"].wait(0.01):
                if cancelled.is_set():
                    from nnseg.serve.automatic.models import JobCancelled

                    raise JobCancelled()
                if release["fail"].is_set() and name == "fails":
                    raise CaseError("refused", status=422)
            output.write_bytes(b"seg")
        finally:
            with lock:
                running.remove(name)

    monkeypatch.setattr("nnseg.serve.automatic.jobs.predict_case", fake_predict)
    queue = JobQueue([{"m": _Model()} for _ in range(workers)], work_dir=tmp_path / "jobs", memory=memory)
    return queue, running, peak, release


def _submit(queue: JobQueue, name: str, nbytes: int):  # noqa: ANN202
    job = queue.new_job("m", [".nii.gz"], ".nii.gz")
    job.inputs[0].write_text(name)
    job.memory = nbytes
    queue.submit(job)
    return job


def _until(condition, timeout: float = 10.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_two_workers_share_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Budget 10 GB, two workers: two 4 GB cases run at once; a 7 GB case waits for both, and the 1 GB case behind it
    waits too (first come, first served); a waiting job can be cancelled; failures give their memory back."""
    memory = ServerMemory(10 * GB, "test")
    queue, running, peak, release = _queue(tmp_path, monkeypatch, memory, workers=2)
    try:
        a, b = _submit(queue, "a", 4 * GB), _submit(queue, "fails", 4 * GB)
        _until(lambda: sorted(running) == ["a", "fails"])
        big, small = _submit(queue, "big", 7 * GB), _submit(queue, "small", 1 * GB)
        doomed = _submit(queue, "doomed", 1 * GB)
        time.sleep(0.3)
        assert big.status == QUEUED and small.status == QUEUED and memory.used == 8 * GB  # 2 GB free: big waits
        assert queue.cancel(doomed.id).status == CANCELLED
        release["fail"].set()  # one running case fails: its 4 GB come back
        _until(lambda: b.status == FAILED)
        time.sleep(0.2)
        assert big.status == QUEUED and memory.used == 4 * GB  # 4 + 7 > 10: still waiting for "a"
        release["ok"].set()
        for job in (a, big, small):
            _until(lambda j=job: j.status == DONE)
        assert peak[0] <= 10 * GB and memory.used == 0
    finally:
        queue.shutdown()


def test_a_job_waiting_for_memory_is_cancelled_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = ServerMemory(10 * GB, "test")
    queue, running, _, release = _queue(tmp_path, monkeypatch, memory, workers=2)
    try:
        first = _submit(queue, "first", 9 * GB)
        _until(lambda: first.status == RUNNING)
        waiting = _submit(queue, "waiting", 2 * GB)
        time.sleep(0.2)
        assert waiting.status == QUEUED
        queue.cancel(waiting.id)
        assert waiting.status == CANCELLED and running == ["first"]
        queue.cancel(first.id)
        _until(lambda: first.status == CANCELLED)
        assert memory.used == 0
        after = _submit(queue, "after", 10 * GB)  # the whole budget is free again
        _until(lambda: after.status == RUNNING)
        release["ok"].set()
        _until(lambda: after.status == DONE)
    finally:
        queue.shutdown()


def test_named_holders_swap_atomically_and_releases_wake_listeners() -> None:
    memory = ServerMemory(10 * GB, "test")
    woken: list[int] = []
    memory.on_release(lambda: woken.append(1))
    assert memory.try_reserve(3 * GB) == 3 * GB and memory.try_swap(0, 5 * GB, "interactive sessions")
    assert memory.held() == {"jobs": 3 * GB, "interactive sessions": 5 * GB} and memory.free() == 2 * GB
    assert not memory.try_swap(5 * GB, 8 * GB, "interactive sessions")  # 3 + 8 > 10: the 5 GB stay held
    assert memory.held()["interactive sessions"] == 5 * GB and not woken
    assert memory.try_swap(5 * GB, 7 * GB, "interactive sessions") and memory.used == 10 * GB
    assert memory.try_swap(7 * GB, 1 * GB, "interactive sessions") and woken == [1]  # shrinking wakes waiters
    memory.release(3 * GB)
    assert memory.held() == {"jobs": 0, "interactive sessions": 1 * GB} and len(woken) == 2


def test_a_job_waiting_for_what_an_interactive_session_holds_starts_when_it_is_released(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = ServerMemory(10 * GB, "test")
    queue, running, _, release = _queue(tmp_path, monkeypatch, memory, workers=1)
    try:
        assert memory.try_swap(0, 8 * GB, "interactive sessions")
        job = _submit(queue, "job", 4 * GB)
        time.sleep(0.3)
        assert job.status == QUEUED
        memory.try_swap(8 * GB, 0, "interactive sessions")  # the session is released: no job ending wakes the worker
        _until(lambda: job.status == RUNNING)
        release["ok"].set()
        _until(lambda: job.status == DONE)
    finally:
        queue.shutdown()
