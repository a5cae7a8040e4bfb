"""The job queue of ``nnseg serve``: bounded, one worker thread per device, progress, cancellation, clean-up.

Every prediction (synchronous or not) is a :class:`Job`. Jobs wait in one FIFO shared by the devices' workers; at
most ``max_queued`` may wait, beyond that :meth:`JobQueue.submit` raises :class:`QueueFull` (HTTP 429). Each job owns
a folder under the server's work folder holding its uploads and its result; the uploads are deleted as soon as the
job ends, the folder (and result) when the job is removed: by the client (``DELETE``), after a synchronous answer, or
``result_ttl_s`` seconds after it ended (a sweeper thread removes expired jobs, and ``also_sweep``, every
:func:`sweep_interval` seconds; lookups sweep first, so an expired job is never answered). Nothing else is ever written.

With the server's memory budget (:class:`~nnseg.serve.memory.ServerMemory`), a worker takes the job at the head of
the queue only once it could reserve the job's planned bytes (``Job.memory``, set before the job is queued); it gives
them back when the job ends. The head job waits (still ``queued``, cancellable) while running jobs hold too much of
the budget, and the jobs behind it wait too (first come, first served: a large case is not overtaken for ever).
"""

from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnseg.serve.automatic.dicom_upload import DICOM_ZIP, predict_dicom_zip
from nnseg.serve.memory import ServerMemory
from nnseg.serve.automatic.models import CaseError, JobCancelled, ServedModel, predict_case

log = logging.getLogger(__name__)
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


def sweep_interval(ttl_s: float) -> float:
    """Seconds between sweeps: a quarter of the TTL, between 0.25 s and 30 s."""
    return min(30.0, max(0.25, ttl_s / 4))


class QueueFull(RuntimeError):
    """More jobs are waiting than the queue holds (answer 429: retry later)."""


@dataclass
class Job:
    """One case to predict; ``folder`` holds its uploads (``inputs``) and ``result``."""

    id: str
    model: str
    folder: Path
    inputs: list[Path]
    result: Path
    status: str = QUEUED
    progress: float = 0.0
    error: str | None = None
    error_status: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    memory: int = 0  # bytes its case is planned to take (the memory plan's estimate), reserved while it runs
    _callbacks: list[Callable[[Job], None]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "status": self.status, "progress": round(self.progress, 4),
                "error": self.error, "created": self.created, "started": self.started, "finished": self.finished}


class JobQueue:
    """Bounded FIFO of jobs with one worker thread per device (``runners``: per device, model name -> model)."""

    def __init__(self, runners: Sequence[Mapping[str, ServedModel]], *, work_dir: Path, max_queued: int = 16,
                 result_ttl_s: float = 600.0, also_sweep: Callable[[], None] | None = None,
                 memory: ServerMemory | None = None) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.work_dir = work_dir
        work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_queued = max_queued
        self.result_ttl_s = result_ttl_s
        self._jobs: dict[str, Job] = {}
        self.memory = memory
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        if memory is not None:  # an interactive session giving its memory back may let the head job start
            memory.on_release(self._wake)
        self._threads = [threading.Thread(target=self._work, args=(models,), name=f"nnseg-serve-worker-{i}", daemon=True)
                         for i, models in enumerate(runners)]
        self._also_sweep = also_sweep
        self._stopped = threading.Event()
        self._threads.append(threading.Thread(target=self._sweeper, name="nnseg-serve-sweeper", daemon=True))
        for t in self._threads:
            t.start()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _sweeper(self) -> None:
        while not self._stopped.wait(sweep_interval(self.result_ttl_s)):
            try:
                self.sweep()
                if self._also_sweep is not None:
                    self._also_sweep()
            except Exception:  # noqa: BLE001 - housekeeping must not end; the next round retries
                log.exception("sweeping expired results failed")

    def new_job(self, model: str, endings: Sequence[str], result_ending: str) -> Job:
        """A job folder with input paths named by the server (``input_0000.nii.gz``, ...); not queued yet."""
        self.check_room()
        job_id = uuid.uuid4().hex
        folder = self.work_dir / job_id
        folder.mkdir(mode=0o700)
        inputs = [folder / f"input_{i:04d}{e}" for i, e in enumerate(endings)]
        return Job(id=job_id, model=model, folder=folder, inputs=inputs, result=folder / f"result{result_ending}")

    def check_room(self) -> None:
        """Raises :class:`QueueFull` when ``max_queued`` jobs are waiting (ended jobs past their TTL are swept)."""
        self.sweep()
        with self._cond:
            self._check_room()

    def _check_room(self) -> None:
        if len(self._waiting) >= self.max_queued:
            raise QueueFull(f"{len(self._waiting)} jobs are waiting, the queue holds {self.max_queued}; retry later "
                            "(or start the server with a larger --max_queued)")

    def submit(self, job: Job) -> None:
        """Queue a job made by :meth:`new_job` (its uploads written). Raises :class:`QueueFull` (folder removed)."""
        with self._cond:
            try:
                self._check_room()
            except QueueFull:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._cond.notify()

    def discard(self, job: Job) -> None:
        """Forget a job that was never submitted (e.g. its upload failed) and delete its folder."""
        shutil.rmtree(job.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        """Raises KeyError (HTTP 404) for an unknown, removed or expired job."""
        self.sweep()
        return self._lookup(job_id)

    def _lookup(self, job_id: str) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id!r} (unknown, removed, or older than {self.result_ttl_s:.0f} s)")
        return job

    def on_done(self, job: Job, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` once the job has ended (now, if it already has); it runs in a worker thread."""
        with self._cond:
            if job.status not in FINISHED:
                job._callbacks.append(callback)
                return
        callback(job)

    def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job at once, a running one at its next network call (status ``cancelled`` then)."""
        job = self._lookup(job_id)
        with self._cond:
            job.cancel.set()
            if job.status == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED)
                self._cond.notify_all()  # it may have been the head a worker waited with for memory
        return job

    def remove(self, job_id: str) -> None:
        """Cancel the job if it has not ended, forget it and delete its files (now, or when its worker lets go)."""
        job = self.cancel(job_id)
        with self._cond:
            self._jobs.pop(job_id, None)
            ended = job.status in FINISHED
        if ended:
            shutil.rmtree(job.folder, ignore_errors=True)

    def sweep(self) -> None:
        """Remove jobs that ended more than ``result_ttl_s`` ago."""
        now = time.time()
        with self._cond:
            old = [j.id for j in self._jobs.values() if j.finished is not None and now - j.finished > self.result_ttl_s]
        for job_id in old:
            self.remove(job_id)

    def counts(self) -> dict[str, int]:
        with self._cond:
            states = [j.status for j in self._jobs.values()]
        return {s: states.count(s) for s in (QUEUED, RUNNING, DONE, FAILED, CANCELLED)}

    def shutdown(self) -> None:
        """Stop the workers (a running job is cancelled) and delete every job folder."""
        self._stopped.set()
        with self._cond:
            self._stop = True
            for job in self._jobs.values():
                job.cancel.set()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=60)
        with self._cond:
            for job in list(self._jobs.values()):
                shutil.rmtree(job.folder, ignore_errors=True)
            self._jobs.clear()

    def _finish(self, job: Job, status: str, error: str | None = None, error_status: int | None = None) -> None:
        """Set the final state (caller holds the lock); uploads are deleted, callbacks run."""
        job.status, job.error, job.error_status, job.finished = status, error, error_status, time.time()
        for path in job.inputs:
            path.unlink(missing_ok=True)
        if status != DONE:
            job.result.unlink(missing_ok=True)
        if job.id not in self._jobs:  # removed while running: nothing to keep
            shutil.rmtree(job.folder, ignore_errors=True)
        callbacks, job._callbacks = job._callbacks, []
        for cb in callbacks:
            cb(job)

    def _next(self) -> tuple[Job, int] | None:
        """The head job once its memory is reserved, with the bytes reserved (None: the queue stops)."""
        with self._cond:
            reserved = None
            while not self._stop and (not self._waiting or (reserved := self._reserve(self._waiting[0])) is None):
                self._cond.wait()
            if self._stop:
                return None
            job = self._waiting.popleft()
            job.status, job.started = RUNNING, time.time()
            return job, int(reserved or 0)

    def _reserve(self, job: Job) -> int | None:
        if self.memory is None or job.memory <= 0:
            return 0
        return self.memory.try_reserve(job.memory)

    def _work(self, models: Mapping[str, ServedModel]) -> None:
        while (taken := self._next()) is not None:
            job, reserved = taken
            status, error, code = DONE, None, None
            try:
                run = predict_dicom_zip if job.inputs[0].name.endswith(DICOM_ZIP) else predict_case
                run(models[job.model], job.inputs, job.result, progress=lambda p, j=job: setattr(j, "progress", p),
                    cancelled=job.cancel)
            except JobCancelled:
                status = CANCELLED
            except CaseError as e:
                status, error, code = FAILED, str(e), e.status
            except ValueError as e:  # the image does not fit the model (e.g. 2D upload for a 3D model)
                status, error, code = FAILED, str(e), 422
            except Exception as e:  # noqa: BLE001 - a failed case must not stop the worker; the client gets the reason
                log.exception("job %s failed", job.id)
                text = str(e).replace(str(job.folder), "<job folder>").replace(str(self.work_dir), "<work folder>")
                status, error, code = FAILED, f"{type(e).__name__}: {text.splitlines()[0] if text else ''}", 500
            with self._cond:
                if self.memory is not None:
                    self.memory.release(reserved)
                self._finish(job, status, error, code)
                self._cond.notify_all()  # a job waiting for memory may fit now
