"""The subset of MONAI Label's REST API that its 3D Slicer module (and its Python client) uses for inference.

Formats as MONAI Label 0.8's server (``monailabel/endpoints/{info,infer,datastore,login}.py``):

* ``GET /info/``: ``{"name", "description", "version", "labels": [...], "models": {name: {"type": "segmentation",
  "labels": {label: value}, "dimension": 3, "description", "config": {}}}, "trainers": {}, "strategies": {},
  "scoring": {}, "train_stats": {}, "datastore": {"total", "completed", "label_tags"}}``.
* ``PUT /datastore/?image=ID`` (and ``/datastore/image``): multipart ``file`` (+ ``params``) -> ``{"image": ID}``.
  3D Slicer uploads the volume it shows this way, then asks for inference by id. Images are kept briefly, in memory's
  index only (see :class:`~nnseg.serve.automatic.uploads.ImageStore`).
* ``POST /infer/{model}?image=ID[&output=image|json|all]``: multipart ``params`` (JSON; ``result_extension`` such as
  ``.nrrd`` picks the label format) and optionally ``file`` (the image itself). Answer (default ``all``): a
  ``multipart/form-data`` body with the field ``params`` (JSON: ``label_names``, ``latencies``) and the file field
  ``image`` holding the label map; ``output=image`` sends the file alone, ``output=json`` the JSON alone.
* ``GET /auth/``, ``POST /auth/token``, ``GET /auth/token/valid``: Slicer's login. With a server token, log in with
  any user name and the token as password; Slicer then sends ``Authorization: bearer <token>``.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime

import hmac
import json
import time
import uuid
from typing import Any

from nnseg import __version__
from nnseg.serve.automatic.models import CaseError
from nnseg.serve.automatic.service import MAX_FILES, ServeState, job_from_form, run_to_bytes
from nnseg.serve.automatic.uploads import save_upload, upload_ending


def monai_info(state: ServeState) -> dict[str, Any]:
    """MONAI Label's ``/info/`` for the served models."""
    models = {}
    merged: list[str] = []
    for name, model in state.models.items():
        d = model.describe()
        models[name] = {"type": "segmentation", "labels": d["labels"], "dimension": d["dimension"],
                        "description": f"nnseg {d['configuration']} model of {d['dataset']} (folds {', '.join(d['folds'])}, "
                                       f"{d['backend']} on {d['device']})", "config": {}}
        merged += [label for label in d["labels"] if label not in merged]
    return {"name": "nnseg", "description": "nnseg inference server (MONAI Label API subset)", "version": __version__,
            "labels": merged, "models": models, "trainers": {}, "strategies": {}, "scoring": {}, "train_stats": {},
            "datastore": {"total": state.store.count(), "completed": 0, "label_tags": {}}}


def multipart_body(params: dict[str, Any], data: bytes, filename: str) -> tuple[bytes, str]:
    """``multipart/form-data`` with ``params`` (JSON) and the file field ``image`` (MONAI Label's infer answer)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\nContent-Type: application/json\r\n\r\n'
            f'{json.dumps(params)}\r\n--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _params(form: Any) -> dict[str, Any]:
    raw = form.get("params") or "{}"
    try:
        params = json.loads(raw if isinstance(raw, str) else "{}")
    except json.JSONDecodeError:
        raise CaseError(f"the form field 'params' is not JSON ({str(raw)[:80]!r}); send a JSON object") from None
    if not isinstance(params, dict):
        raise CaseError(f"the form field 'params' must be a JSON object, got {type(params).__name__}")
    extension = params.get("result_extension")
    if extension is not None and not isinstance(extension, str):
        raise CaseError(f"params.result_extension must be a string such as \".nrrd\", got {json.dumps(extension)[:80]}",
                        status=422)
    return params


def monai_label_router(state: ServeState) -> Any:
    """The MONAI Label endpoints as a FastAPI router."""
    import fastapi

    router = fastapi.APIRouter()
    Request = fastapi.Request

    @router.get("/info/")
    @router.get("/info", include_in_schema=False)
    async def info() -> dict[str, Any]:
        return monai_info(state)

    @router.put("/datastore/")
    @router.put("/datastore/image")
    async def upload(request: Request, image: str | None = None) -> dict[str, Any]:
        async with request.form(max_files=1, max_fields=8) as form:
            file = form.get("file")
            if not hasattr(file, "read"):
                raise CaseError("no image in the request: send it as the multipart field 'file'")
            ending = upload_ending(file.filename)
            path = state.store.new_path(ending)
            try:
                await save_upload(file, path)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        image_id = image or uuid.uuid4().hex
        state.store.add(image_id, path)
        return {"image": image_id}

    _infer_route(router, state)
    _auth_routes(router, state)
    return router


def _infer_route(router: Any, state: ServeState) -> None:
    import fastapi
    from fastapi.responses import JSONResponse, Response

    Request = fastapi.Request

    @router.post("/infer/{model}")
    async def infer(model: str, request: Request, image: str = "", output: str | None = None) -> Any:
        start = time.perf_counter()
        served = state.model(model)
        state.queue.check_room()
        async with request.form(max_files=MAX_FILES, max_fields=8) as form:
            params = _params(form)
            job = await job_from_form(state, model, form, image_id=image or None,
                                      result_format=params.get("result_extension"))
        data = await run_to_bytes(state, job, request)
        result = {"label_names": served.describe()["labels"], "model": model,
                  "latencies": {"total": round(time.perf_counter() - start, 3)}}
        filename = f"{model}_{job.id[:8]}{job.result.name[len('result'):]}"
        if output == "json":
            return JSONResponse(result)
        if output == "image":
            return Response(data, media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        body, content_type = multipart_body(result, data, filename)
        return Response(body, media_type=content_type)


def _auth_routes(router: Any, state: ServeState) -> None:
    import fastapi
    from fastapi.responses import JSONResponse

    Request = fastapi.Request

    @router.get("/auth/")
    @router.get("/auth", include_in_schema=False)
    async def auth_enabled() -> dict[str, Any]:
        return {"enabled": state.token is not None, "client_id": None, "realm": None}

    @router.post("/auth/token")
    async def auth_token(request: Request) -> Any:
        if state.token is None:
            return {"access_token": None, "token_type": None}
        async with request.form(max_files=0, max_fields=8) as form:
            password = str(form.get("password") or "")
        if not hmac.compare_digest(password.encode(), state.token.encode()):
            return JSONResponse({"detail": "wrong password: log in with the server's token as the password"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return {"access_token": state.token, "token_type": "bearer"}

    @router.get("/auth/token/valid")
    async def auth_valid() -> dict[str, Any]:
        return {"username": "nnseg", "valid": True}
