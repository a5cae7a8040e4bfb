"""The API routes only the page uses (token required like the rest of ``/v1``).

* ``GET /v1/models/{model}/display``: label names, values and colours, channels, whether DICOM zips and DICOM SEG work
  on this server, whether the model has a training report.
* ``GET /v1/models/{model}/report``: the training report (HTML, no scripts; 404 without a validation).
* ``POST /v1/dicom/image``: multipart ``file`` = a DICOM series zip -> the series as NIfTI (what the page shows).
* ``POST /v1/models/{model}/dicom-seg``: ``file`` = the zip, ``labels`` = a label map (NIfTI) on the series' grid
  -> the DICOM SEG (``application/dicom``); the page sends the predicted or the corrected mask.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime; this module
# is imported only when the app is built (fastapi installed)
import asyncio
import shutil
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from nnseg.serve.automatic.dicom_upload import check_dicom_request, is_dicom_zip
from nnseg.serve.automatic.models import CaseError
from nnseg.serve.page.dicom import scratch_folder, series_image, series_seg
from nnseg.serve.page.info import ReportCache, describe_for_page
from nnseg.serve.automatic.service import NotFound, ServeState
from nnseg.serve.automatic.uploads import save_upload


def _one_file(form: Any, field: str, *, zip_expected: bool) -> Any:
    files = [f for f in form.getlist(field) if hasattr(f, "read")]
    if len(files) != 1:
        raise CaseError(f"send exactly one file as the multipart field {field!r} (got {len(files)})", status=422)
    if zip_expected and not is_dicom_zip(files[0].filename):
        raise CaseError(f"{files[0].filename!r} is not a .zip; send a zip of one DICOM series")
    return files[0]


def page_api_router(state: ServeState) -> Any:
    """The routes above over the server's state."""
    router = APIRouter()
    _info_routes(router, state)
    _dicom_routes(router, state)
    return router


def _info_routes(router: Any, state: ServeState) -> None:
    reports = ReportCache()

    @router.get("/v1/models/{model}/display")
    async def display(model: str) -> dict[str, Any]:
        return describe_for_page(state.model(model))

    @router.get("/v1/models/{model}/report")
    async def report(model: str) -> Any:
        served = state.model(model)
        try:
            page = await asyncio.to_thread(reports.get, served)
        except FileNotFoundError as e:
            raise NotFound(str(e)) from None
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'none'; img-src data:; "
                                           "style-src 'unsafe-inline'; sandbox"})


def _dicom_routes(router: Any, state: ServeState) -> None:
    @router.post("/v1/dicom/image")
    async def dicom_image(request: Request) -> Any:
        folder = scratch_folder(state.work_dir)
        try:
            async with request.form(max_files=1, max_fields=4) as form:
                await save_upload(_one_file(form, "file", zip_expected=True), folder / "series.zip")
            data = await asyncio.to_thread(series_image, folder / "series.zip", max_upload_bytes=state.max_upload_bytes)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Response(data, media_type="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="dicom_image.nii.gz"'})

    @router.post("/v1/models/{model}/dicom-seg")
    async def dicom_seg(model: str, request: Request) -> Any:
        served = state.model(model)
        check_dicom_request(served, files=1, seg=True)
        folder = scratch_folder(state.work_dir)
        try:
            async with request.form(max_files=2, max_fields=4) as form:
                await save_upload(_one_file(form, "file", zip_expected=True), folder / "series.zip")
                await save_upload(_one_file(form, "labels", zip_expected=False), folder / "labels.nii.gz")
            data = await asyncio.to_thread(series_seg, served, folder / "series.zip", folder / "labels.nii.gz",
                                           max_upload_bytes=state.max_upload_bytes)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Response(data, media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{model}_segmentation.dcm"'})
