"""nnInteractive's server protocol on ``nnseg serve --interactive``: the routes ``nninteractive-client`` calls.

Paths, bodies and answers are nnInteractive 2.6.0's (docs/INTERACTIVE.md, "Server protocol"): ``/healthz``,
``/capabilities``, ``/claim``, ``/release``, ``/heartbeat``, ``/lease_status``, ``/set_image``, ``/set_target_buffer``,
``/set_do_autozoom``, ``/reset_interactions``, ``/undo``, ``/predict`` and ``/add_*_interaction``. Prompt answers carry
``X-Meta: {"ran_prediction", "bbox", "dtype", "shape"}`` and the changed region of the target buffer as a packed array.
A request with ``X-Array-Codec: raw`` (the browser page's) may send and gets uncompressed packed arrays.
Errors are ``{"detail": ...}``: 400 bad payload or prompt, 410 expired/unknown lease, 503 at capacity (Retry-After:
every session slot taken, or an image that fits the server's memory budget but not beside what jobs and other
sessions hold now; ``nninteractive-client`` raises ``ServerAtCapacityError`` with the detail), 413 an image whose
memory estimate exceeds the whole budget (restart with a larger ``--max-memory``), and 401 without the server's
bearer token (the server's auth middleware).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime

import json
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from nnseg import __version__
from nnseg.interactive import InteractiveSession
from nnseg.interactive.capabilities import SESSION_VERSION
from nnseg.serve.interactive.sessions import AtCapacity, LeaseGone, SessionRegistry, TooLarge
from nnseg.serve.interactive.wire import pack, packed_shape, unpack

LEASE_HEADER, META_HEADER = "X-Lease-Token", "X-Meta"
# nnseg's addition for the browser page (no blosc2 there): `X-Array-Codec: raw` lets the request's packed arrays and the
# answer's use codec 0 (uncompressed); without it the format is nnInteractive's alone
CODEC_HEADER = "X-Array-Codec"
PUBLIC_PATHS = {"/healthz"}
OCTET = "application/octet-stream"


def ram_share_bytes() -> int:
    """A quarter of the machine's memory: the largest image or target buffer one client may make the server hold."""
    import psutil

    return int(psutil.virtual_memory().total * 0.25)


def capabilities(registry: SessionRegistry) -> dict[str, Any]:
    """The ``/capabilities`` answer (what the client copies onto its session object)."""
    caps, opts = registry.model.capabilities, registry.options
    return {"supported_interactions": dict(caps.supported), "channel_mapping": caps.channel_mapping_json(),
            "num_interaction_channels": caps.num_interaction_channels,
            "supports_initial_label": caps.supports_initial_label,
            "supports_zero_shot_label_refinement": caps.supports_zero_shot_label_refinement,
            "preferred_scribble_thickness": caps.scribble_thickness, "interaction_decay": caps.interaction_decay,
            "patch_size": registry.model.patch_size, "do_autozoom": opts.do_autozoom,
            "inference_session_version": SESSION_VERSION, "license": registry.model.license,
            "supports_undo": opts.enable_undo, "server": f"nnseg {__version__}"}


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as e:
        raise ValueError(f"the request body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise ValueError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _meta(header: str | None) -> dict[str, Any]:
    try:
        meta = json.loads(header) if header else {}
    except ValueError as e:
        raise ValueError(f"bad {META_HEADER} header ({e}); it must be a JSON object") from None
    if not isinstance(meta, dict):
        raise ValueError(f"the {META_HEADER} header must be a JSON object")
    return meta


def _flag(body: dict[str, Any], key: str, default: bool | None = None) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} must be true or false, got {value!r}" if key in body else f"{key!r} is required")
    return value


def target_buffer_request(body: dict[str, Any]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``/set_target_buffer`` request, checked (3 positive ints, bool/integer, size cap)."""
    shape = body.get("shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape must be a list of 3 positive integers, got {shape!r}")
    try:
        dtype = np.dtype(body.get("dtype"))
    except TypeError:
        raise ValueError(f"invalid dtype {body.get('dtype')!r}") from None
    if body.get("dtype") is None or dtype.kind not in "biu":
        raise ValueError(f"the target buffer must be bool or an integer type, got {body.get('dtype')!r}")
    nbytes = math.prod(int(s) for s in shape) * dtype.itemsize
    if nbytes > ram_share_bytes():
        raise ValueError(f"a target buffer of {shape} {dtype} needs {nbytes} bytes; the limit is {ram_share_bytes()}")
    return tuple(int(s) for s in shape), dtype


def target_buffer_bytes(registry: SessionRegistry, session: InteractiveSession, shape: tuple[int, ...],
                        dtype: np.dtype) -> tuple[int, str]:
    """What ``session`` holds with a target buffer of ``shape`` and ``dtype`` (and its image, if one is set)."""
    what = f"a target buffer of shape {list(shape)} {dtype}"
    if session.image is None:
        return math.prod(shape) * dtype.itemsize, what
    return registry.image_bytes([session.image.shape[0], *shape], dtype.itemsize), what


def wants_raw(request: Any) -> bool:
    """Whether the request asks for uncompressed packed arrays (``X-Array-Codec: raw``); other values are refused."""
    codec = request.headers.get(CODEC_HEADER)
    if codec not in (None, "raw"):
        raise ValueError(f"{CODEC_HEADER} {codec!r} is not known; the only value is 'raw' (or leave the header out)")
    return codec == "raw"


def prediction_response(session: InteractiveSession, ran: bool, raw: bool = False) -> Any:
    """The answer to a prompt, prediction or undo: the changed region of the target buffer (or nothing)."""
    from fastapi.responses import Response

    box = session.take_changed_box() if ran else None
    meta: dict[str, Any] = {"ran_prediction": bool(ran), "bbox": None}
    body = b""
    if box is not None and session.target_buffer is not None:
        region = np.ascontiguousarray(session.target_buffer[tuple(slice(lo, hi) for lo, hi in box)])
        meta.update(bbox=box, dtype=str(region.dtype), shape=list(region.shape))
        body = pack(region, raw=raw)
    return Response(content=body, media_type=OCTET, headers={META_HEADER: json.dumps(meta, separators=(",", ":"))})


def _http_errors(fn: Callable[[], Any]) -> Any:
    from fastapi import HTTPException

    try:
        return fn()
    except LeaseGone as e:
        raise HTTPException(410, detail=str(e)) from None
    except AtCapacity as e:
        raise HTTPException(503, detail=str(e), headers={"Retry-After": "10"}) from None
    except TooLarge as e:
        raise HTTPException(413, detail=str(e)) from None
    except ValueError as e:
        raise HTTPException(400, detail=str(e)) from None


async def _in_thread(fn: Callable[[], Any]) -> Any:
    from fastapi.concurrency import run_in_threadpool

    return await run_in_threadpool(_http_errors, fn)


def interactive_router(registry: SessionRegistry) -> Any:
    """The protocol's routes over ``registry`` (mounted at the server's root beside nnseg's own API)."""
    from fastapi import APIRouter

    router = APIRouter()
    _lease_routes(router, registry)
    _state_routes(router, registry)
    _prompt_routes(router, registry)
    return router


def _lease_routes(router: Any, registry: SessionRegistry) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @router.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @router.get("/capabilities")
    async def get_capabilities() -> dict[str, Any]:
        return capabilities(registry)

    @router.post("/claim")
    async def claim() -> Any:
        token = _http_errors(registry.claim)
        opts = registry.options
        return JSONResponse({"lease_token": token, "idle_timeout_seconds": opts.idle_timeout_s,
                             "liveness_timeout_seconds": opts.liveness_timeout_s, "max_sessions": opts.max_sessions})

    @router.post("/release")
    async def release(request: Request) -> dict[str, bool]:
        lease = request.headers.get(LEASE_HEADER)
        await _in_thread(lambda: registry.release(lease))
        return {"released": True}

    @router.post("/heartbeat")
    async def heartbeat(request: Request) -> dict[str, float]:
        lease = request.headers.get(LEASE_HEADER)
        return {"remaining_seconds": _http_errors(lambda: registry.remaining_s(lease, heartbeat=True))}

    @router.get("/lease_status")
    async def lease_status(request: Request) -> dict[str, float]:
        lease = request.headers.get(LEASE_HEADER)
        return {"remaining_seconds": _http_errors(lambda: registry.remaining_s(lease, heartbeat=False)),
                "idle_timeout_seconds": registry.options.idle_timeout_s}


def _state_routes(router: Any, registry: SessionRegistry) -> None:
    from fastapi import Request

    @router.post("/set_image")
    async def set_image(request: Request) -> Any:
        lease, raw = request.headers.get(LEASE_HEADER), await request.body()
        _http_errors(lambda: _meta(request.headers.get(META_HEADER)))
        plain = _http_errors(lambda: wants_raw(request))

        def work() -> dict[str, Any]:
            registry.remaining_s(lease, heartbeat=False)  # an unknown lease is refused before decompressing
            shape = packed_shape(raw, raw=plain)
            if len(shape) != 4:
                raise ValueError(f"the image must be 4D [c, x, y, z], got shape {list(shape)}")
            need = (registry.image_bytes(shape), f"an image of shape {list(shape)}")
            # its estimate is reserved before the body is decompressed; refused, nothing is held
            registry.run(lease, lambda s: s.set_image(unpack(raw, max_bytes=ram_share_bytes(), raw=plain)),
                         memory=lambda s: need)
            return {"original_image_shape": list(shape)}

        return await _in_thread(work)

    @router.post("/set_target_buffer")
    async def set_target_buffer(request: Request) -> Any:
        lease, raw = request.headers.get(LEASE_HEADER), await request.body()

        def work() -> dict[str, Any]:
            shape, dtype = target_buffer_request(_json_body(raw))
            registry.run(lease, lambda s: s.set_target_buffer(np.zeros(shape, dtype)),
                         memory=lambda s: target_buffer_bytes(registry, s, shape, dtype))
            return {}

        return await _in_thread(work)

    @router.post("/set_do_autozoom")
    async def set_do_autozoom(request: Request) -> Any:
        lease, raw = request.headers.get(LEASE_HEADER), await request.body()
        return await _in_thread(lambda: registry.run(
            lease, lambda s: s.set_do_autozoom(_flag(_json_body(raw), "do_autozoom"))) or {})

    @router.post("/reset_interactions")
    async def reset_interactions(request: Request) -> Any:
        lease = request.headers.get(LEASE_HEADER)
        return await _in_thread(lambda: registry.run(lease, lambda s: s.reset_interactions()) or {})

    @router.post("/predict")
    async def predict(request: Request) -> Any:
        raw = await request.body()

        def action(s: InteractiveSession) -> bool:
            return s.predict(force_full_refine=_flag(_json_body(raw), "force_full_refine", False)) is not None

        return await _in_thread(lambda: _prompt(registry, request, action))


def _prompt(registry: SessionRegistry, request: Any, action: Callable[[InteractiveSession], bool]) -> Any:
    """Run a prompt on the prediction thread, then answer with the changed region (built on the request's thread)."""
    lease, plain = request.headers.get(LEASE_HEADER), wants_raw(request)
    ran = registry.run(lease, action, predicts=True)
    return registry.run(lease, lambda s: prediction_response(s, ran, plain))


def _prompt_routes(router: Any, registry: SessionRegistry) -> None:
    from fastapi import Request

    router.add_api_route("/add_point_interaction", _json_prompt_route(registry, "point", "coordinates"),
                         methods=["POST"])
    router.add_api_route("/add_bbox_interaction", _json_prompt_route(registry, "bbox", "bbox_coords"), methods=["POST"])

    @router.post("/undo")
    async def undo(request: Request) -> Any:
        lease, plain = request.headers.get(LEASE_HEADER), _http_errors(lambda: wants_raw(request))
        return await _in_thread(lambda: registry.run(lease, lambda s: prediction_response(s, s.undo(), plain)))

    for kind in ("scribble", "lasso", "initial_seg"):
        router.add_api_route(f"/add_{kind}_interaction", _mask_route(registry, kind), methods=["POST"])


def _json_prompt_route(registry: SessionRegistry, kind: str, coordinates_key: str) -> Callable[..., Any]:
    """``/add_{kind}_interaction`` for the prompts whose coordinates come in a JSON body (point, bbox)."""
    from fastapi import Request

    async def add_prompt(request: Request) -> Any:
        body = await request.body()

        def action(s: InteractiveSession) -> bool:
            b = _json_body(body)
            run = _flag(b, "run_prediction", True)
            add = s.add_point_interaction if kind == "point" else s.add_bbox_interaction
            add(b.get(coordinates_key), _flag(b, "include_interaction"), run,
                _flag(b, "override_capability_checks", False))
            return run

        return await _in_thread(lambda: _prompt(registry, request, action))

    return add_prompt


def _mask_route(registry: SessionRegistry, kind: str) -> Callable[..., Any]:
    from fastapi import Request

    async def add_mask(request: Request) -> Any:
        lease, raw = request.headers.get(LEASE_HEADER), await request.body()
        meta = _http_errors(lambda: _meta(request.headers.get(META_HEADER)))

        def work() -> Any:
            registry.remaining_s(lease, heartbeat=False)
            mask = unpack(raw, max_bytes=ram_share_bytes(), raw=wants_raw(request))
            run = _flag(meta, "run_prediction", kind != "initial_seg")
            force = _flag(meta, "override_capability_checks", False)

            def action(s: InteractiveSession) -> bool:
                if kind == "initial_seg":
                    s.add_initial_seg_interaction(mask, run, force)
                else:
                    add = s.add_scribble_interaction if kind == "scribble" else s.add_lasso_interaction
                    add(mask, _flag(meta, "include_interaction"), run, force, meta.get("interaction_bbox"))
                return run

            return _prompt(registry, request, action)

        return await _in_thread(work)

    return add_mask
