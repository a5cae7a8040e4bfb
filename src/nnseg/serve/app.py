"""The FastAPI application of ``nnseg serve``: the native REST API, auth, limits and JSON errors.

Native API (every answer is JSON except label maps; errors are ``{"detail": "..."}``):

* ``GET /health`` (no token): ``{"status": "ok"}``. ``GET /`` (no token): the browser page (:mod:`nnseg.serve.page`).
* ``GET /v1/models``: the served models (labels, channels, configuration, folds, device, backend), the queue, and
  the memory budget with what running jobs and interactive sessions hold of it (:mod:`nnseg.serve.memory`).
* ``POST /v1/models/{model}/predict``: multipart ``file`` (one per channel, NIfTI/NRRD/MHA) -> the label map
  (same format as the upload, or ``?result_format=.nrrd``). Waits for the result.
* The upload may instead be a ``.zip`` of one DICOM image series (NIfTI answer, or ``?result_format=dicom-seg``:
  a DICOM SEG, ``application/dicom``); see :mod:`nnseg.serve.automatic.dicom_upload`.
* ``POST /v1/models/{model}/jobs``: the same upload -> 202 ``{"id", "status", ...}``; ``GET /v1/jobs/{id}`` gives
  status and progress (0..1), ``GET /v1/jobs/{id}/result`` the label map, ``POST /v1/jobs/{id}/cancel`` cancels it
  (status ``cancelled``), ``DELETE /v1/jobs/{id}`` cancels it and deletes it with its files.

Status codes: 400 bad or unreadable file, 401 missing/wrong token, 403 foreign Host or cross-origin request, 404
unknown model or job, 408 body too slow, 409 result not ready, 413 upload too large or a case that does not fit the
memory budget, 422 refused by the prediction input checks (wrong channels, NaN, 2D for 3D, implausible spacing; or
not exactly one valid DICOM series), 429 queue full (retry later), 501 DICOM upload to a server without pydicom.
A synchronous request whose client goes away cancels its job.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime

from collections.abc import Sequence
from typing import Any

from nnseg import __version__
from nnseg.serve.auth import LOOPBACK_NAMES, BearerAuth, RequestGuard, SameOrigin
from nnseg.serve.automatic.jobs import QueueFull
from nnseg.serve.automatic.models import CaseError
from nnseg.serve.automatic.service import (
    MAX_FILES,
    ClientGone,
    NotFound,
    ServeState,
    describe_all,
    job_from_form,
    job_result,
    run_to_bytes,
)
from nnseg.serve.automatic.uploads import RequestTimeout, SizeLimit, UploadTooLarge

PUBLIC_PATHS = {"/health", "/auth/", "/auth", "/auth/token"}
MEDIA_TYPES = {".nii.gz": "application/gzip", ".nrrd": "application/octet-stream", ".mha": "application/octet-stream",
               ".dcm": "application/dicom"}


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError:
        raise ImportError("nnseg serve needs fastapi, uvicorn and python-multipart: `pip install nnseg[serve]`") from None
    return fastapi


def label_response(data: bytes, filename: str) -> Any:
    from fastapi.responses import Response

    ending = next((e for e in MEDIA_TYPES if filename.endswith(e)), ".nrrd")
    return Response(content=data, media_type=MEDIA_TYPES[ending],
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def create_app(state: ServeState, *, devices: Sequence[str] = ("cpu",), guard: RequestGuard | None = None,
               interactive: Any = None) -> Any:
    """The FastAPI app over ``state`` (models loaded, queue running); :mod:`nnseg.serve.server` runs it.

    ``guard``: the Host / cross-origin rules and the body timeout (default: loopback names only, no foreign origin).
    ``interactive``: a :class:`~nnseg.serve.interactive.sessions.SessionRegistry` whose model is served with
    nnInteractive's protocol (:mod:`nnseg.serve.interactive.api`) at the root, beside the native API.
    """
    guard = guard or RequestGuard(hosts=None if state.token else set(LOOPBACK_NAMES))
    fastapi = _fastapi()
    from nnseg.serve.monai_label import monai_label_router
    from nnseg.serve.page.api import page_api_router
    from nnseg.serve.page.routes import page_router, public_paths

    app = fastapi.FastAPI(title="nnseg serve", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.nnseg = state
    _install_errors(app, state)
    app.include_router(_model_router(state, devices, interactive))
    app.include_router(_job_router(state))
    app.include_router(monai_label_router(state))
    app.include_router(page_api_router(state))
    app.include_router(page_router())
    public = set(PUBLIC_PATHS) | public_paths()
    if interactive is not None:
        from nnseg.serve.interactive.api import PUBLIC_PATHS as INTERACTIVE_PUBLIC, interactive_router

        app.include_router(interactive_router(interactive))
        public |= INTERACTIVE_PUBLIC
    app.add_middleware(SizeLimit, limit=state.max_upload_bytes, body_timeout_s=guard.body_timeout_s)
    app.add_middleware(BearerAuth, token=state.token, public=public)
    app.add_middleware(SameOrigin, guard=guard)  # added last: runs first
    return app


def _install_errors(app: Any, state: ServeState) -> None:
    from fastapi.responses import JSONResponse

    def handler(status: int | None, headers: dict[str, str] | None = None) -> Any:
        async def handle(request: Any, exc: Exception) -> Any:
            code = status if status is not None else getattr(exc, "status", 400)
            extra = headers or ({"Retry-After": "5"} if code == 429 else None)
            return JSONResponse({"detail": str(exc)}, status_code=code, headers=extra)
        return handle

    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(CaseError, handler(None))
    app.add_exception_handler(QueueFull, handler(429, {"Retry-After": "5"}))
    app.add_exception_handler(UploadTooLarge, handler(413, {"Connection": "close"}))
    app.add_exception_handler(RequestTimeout, handler(408, {"Connection": "close"}))
    app.add_exception_handler(ClientGone, handler(499))

    async def internal(request: Any, exc: Exception) -> Any:
        text = str(exc).replace(str(state.work_dir), "<server folder>")  # clients never see the server's paths
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}: {text.splitlines()[0] if text else ''}); "
                                       "see the server log"}, status_code=500)

    app.add_exception_handler(Exception, internal)


def _form(request: Any) -> Any:
    return request.form(max_files=MAX_FILES, max_fields=32)


def _model_router(state: ServeState, devices: Sequence[str], interactive: Any = None) -> Any:
    fastapi = _fastapi()
    router = fastapi.APIRouter()
    Request = fastapi.Request

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        memory = state.queue.memory
        return {"models": describe_all(state.models, devices), "queue": state.queue.counts(),
                "max_queued": state.queue.max_queued, "max_upload_bytes": state.max_upload_bytes,
                "memory_budget_bytes": memory.total if memory else None,
                "memory_in_use_bytes": memory.used if memory else None,
                "memory_held_bytes": memory.held() if memory else None,
                "interactive": interactive.describe() if interactive is not None else None}

    @router.get("/v1/models/{model}")
    async def get_model(model: str) -> dict[str, Any]:
        return {**state.model(model).describe(), "devices": list(devices)}

    @router.post("/v1/models/{model}/predict")
    async def predict(model: str, request: Request, result_format: str | None = None) -> Any:
        state.model(model)
        state.queue.check_room()
        async with _form(request) as form:
            job = await job_from_form(state, model, form, result_format=result_format)
        data = await run_to_bytes(state, job, request)
        return label_response(data, f"{model}_segmentation{job.result.name[len('result'):]}")

    @router.post("/v1/models/{model}/jobs", status_code=202)
    async def submit(model: str, request: Request, result_format: str | None = None) -> dict[str, Any]:
        state.model(model)
        state.queue.check_room()
        async with _form(request) as form:
            job = await job_from_form(state, model, form, result_format=result_format)
        return {**job.describe(), "status_url": f"/v1/jobs/{job.id}", "result_url": f"/v1/jobs/{job.id}/result"}

    return router


def _job_router(state: ServeState) -> Any:
    router = _fastapi().APIRouter()

    @router.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str) -> dict[str, Any]:
        try:
            return state.queue.get(job_id).describe()
        except KeyError as e:
            raise NotFound(e.args[0]) from None

    @router.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str) -> Any:
        job, data = job_result(state, job_id)
        return label_response(data, f"{job.model}_segmentation{job.result.name[len('result'):]}")

    @router.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict[str, Any]:
        try:
            return state.queue.cancel(job_id).describe()
        except KeyError as e:
            raise NotFound(e.args[0]) from None

    @router.delete("/v1/jobs/{job_id}")
    async def remove(job_id: str) -> dict[str, Any]:
        try:
            job = state.queue.get(job_id)
        except KeyError as e:
            raise NotFound(e.args[0]) from None
        state.queue.remove(job_id)
        return {**job.describe(), "removed": True}

    return router
