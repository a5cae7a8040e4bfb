"""What the REST endpoints share: the server state and turning a multipart upload into a queued job.

Checks are made before the body is read where possible: unknown model (404) and a full queue (429) are answered
without reading the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg.serve.automatic.dicom_upload import (
    DICOM_ZIP,
    SEG_ENDING,
    UNZIPPED_PER_UPLOAD,
    UnzipBudget,
    check_dicom_request,
    check_dicom_zip,
    dicom_result_ending,
    is_dicom_zip,
)
from nnseg.serve.automatic.jobs import DONE, FINISHED, Job, JobQueue
from nnseg.serve.automatic.models import UPLOAD_ENDINGS, CaseError, ServedModel, check_upload
from nnseg.serve.automatic.uploads import ImageStore, save_upload, upload_ending

MAX_FILES = 16
log = logging.getLogger(__name__)


class NotFound(KeyError):
    """An unknown model, job or stored image (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


@dataclass
class ServeState:
    """Everything a request needs: the models (of the first device, for descriptions), the queue, the store."""

    models: Mapping[str, ServedModel]
    queue: JobQueue
    store: ImageStore
    token: str | None
    max_upload_bytes: int
    work_dir: Path
    unzip: UnzipBudget | None = None  # unpacked bytes of DICOM zips across jobs (None: per-upload limit only)

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise NotFound(f"unknown model {name!r}; this server serves {sorted(self.models)} (GET /v1/models)")
        return self.models[name]


def result_ending(requested: str | None, default: str) -> str:
    """The label map's format: ``requested`` (``.nrrd``, ``nrrd``, ...) if given, else the upload's ending."""
    if not requested:
        return default
    ending = requested if requested.startswith(".") else f".{requested}"
    if ending.lower() not in UPLOAD_ENDINGS:
        raise CaseError(f"result format {requested!r} is not one of {', '.join(UPLOAD_ENDINGS)} (dicom-seg: for the "
                        "upload of a zip of a DICOM series)")
    return ending.lower()


async def job_from_form(state: ServeState, model_name: str, form: Any, *, image_id: str | None = None,
                        result_format: str | None = None) -> Job:
    """Save the ``file`` parts of a parsed form (one per channel) or a stored image into a new job and queue it.

    Raises:
        NotFound: unknown model or stored image. CaseError: no file, too many files, bad endings.
        QueueFull: the queue is full.
    """
    model = state.model(model_name)
    uploads = [f for f in form.getlist("file") if hasattr(f, "read")]
    channels = model.predictor.model.spec.num_channels
    if len(uploads) > channels:
        raise CaseError(f"model {model_name} expects {channels} channel file(s) {model.predictor.model.spec.channel_names}, "
                        f"got {len(uploads)} files", status=422)
    if not uploads and not image_id:
        raise CaseError("no image in the request: send the image as the multipart field 'file' (one per channel)")
    if uploads and is_dicom_zip(uploads[0].filename):
        return await _dicom_job(state, model_name, uploads, result_format)
    endings = [upload_ending(u.filename) for u in uploads]
    job = state.queue.new_job(model_name, endings, result_ending(result_format, endings[0] if endings else ".nii.gz"))
    try:
        if uploads:
            for upload, path in zip(uploads, job.inputs):
                await save_upload(upload, path)
        else:
            try:
                job.inputs = [state.store.copy_to(str(image_id), job.folder)]
            except KeyError as e:
                raise NotFound(e.args[0]) from None
            if not result_format:
                job.result = job.folder / f"result{_ending_of(job.inputs[0])}"
        if len(job.inputs) < channels:
            raise CaseError(f"model {model_name} expects {channels} channel file(s) "
                            f"{model.predictor.model.spec.channel_names}, got {len(job.inputs)}", status=422)
        plan = await asyncio.to_thread(check_upload, model, job.inputs)  # the header checks and the memory plan
        job.memory = plan.estimate  # reserved from the server's budget while it runs
        state.queue.submit(job)
    except BaseException:
        state.queue.discard(job)
        raise
    return job


async def _dicom_job(state: ServeState, model_name: str, uploads: Sequence[Any], result_format: str | None) -> Job:
    """Queue the zip of a DICOM series (checked when it arrives: see :mod:`nnseg.serve.automatic.dicom_upload`)."""
    ending = dicom_result_ending(result_format)
    check_dicom_request(state.model(model_name), files=len(uploads), seg=ending == SEG_ENDING)
    job = state.queue.new_job(model_name, [DICOM_ZIP], ending)
    reserved = 0
    try:
        await save_upload(uploads[0], job.inputs[0])
        reserved, plan = await asyncio.to_thread(check_dicom_zip, job.inputs[0], budget=state.unzip,
                                                 model=state.model(model_name),
                                                 max_unzipped_bytes=UNZIPPED_PER_UPLOAD * state.max_upload_bytes)
        job.memory = plan.estimate if plan is not None else 0
        state.queue.submit(job)
    except BaseException:
        if state.unzip is not None:
            state.unzip.release(reserved)
        state.queue.discard(job)
        raise
    if state.unzip is not None:
        budget = state.unzip
        state.queue.on_done(job, lambda _: budget.release(reserved))  # the worker unpacks it again until then
    return job


def _ending_of(path: Path) -> str:
    return next(e for e in UPLOAD_ENDINGS if path.name.endswith(e))


async def wait_for(queue: JobQueue, job: Job) -> Job:
    """Wait (without blocking the event loop) until the job has ended."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def wake(_: Job) -> None:
        loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(None))

    queue.on_done(job, wake)
    await ended
    return job


class ClientGone(Exception):
    """The client of a synchronous request went away; its job was cancelled (nobody reads the answer)."""

    def __str__(self) -> str:
        return "the client closed the connection; the job was cancelled"


async def run_to_bytes(state: ServeState, job: Job, request: Any = None) -> bytes:
    """Wait for a job, return its label map's bytes and remove it (also when the client went away).

    With ``request``, a client that disconnects while it waits cancels the job at once (its id was never returned,
    so nobody else could fetch the result).

    Raises:
        CaseError: the job failed (its status code) or was cancelled (409). ClientGone: the client went away.
    """
    try:
        if request is None:
            await wait_for(state.queue, job)
        elif not await _ended_or_gone(state.queue, job, request):
            log.info("client of job %s went away: cancelled", job.id)
            raise ClientGone()
        if job.status != DONE:
            raise CaseError(job.error or f"the job was {job.status}", status=job.error_status or 409)
        return job.result.read_bytes()
    finally:
        with contextlib.suppress(KeyError):  # already gone (removed by its id meanwhile)
            state.queue.remove(job.id)


async def _ended_or_gone(queue: JobQueue, job: Job, request: Any) -> bool:
    """True when the job ended, False when the client disconnected first (its body has been read by then)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    ended, disconnected = asyncio.ensure_future(wait_for(queue, job)), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({ended, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (ended, disconnected):
            task.cancel()
    return ended.done() and not ended.cancelled()


def job_result(state: ServeState, job_id: str) -> tuple[Job, bytes]:
    """A finished job's label map. Raises NotFound, or CaseError 409 while it runs / when it failed."""
    try:
        job = state.queue.get(job_id)
    except KeyError as e:
        raise NotFound(e.args[0]) from None
    if job.status not in FINISHED:
        raise CaseError(f"job {job_id} is {job.status} ({job.progress:.0%}); poll GET /v1/jobs/{job_id} until it "
                        "is done", status=409)
    if job.status != DONE:
        raise CaseError(f"job {job_id} {job.status}: {job.error or 'no result'}", status=409)
    return job, job.result.read_bytes()


def describe_all(models: Mapping[str, ServedModel], devices: Sequence[str]) -> list[dict[str, Any]]:
    return [{**m.describe(), "devices": list(devices)} for m in models.values()]
