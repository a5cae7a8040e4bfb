"""Uploads: the request size limit, the allowed endings, and the short-lived image store of the MONAI Label API.

A client's file name is used only to read its ending (one of
:data:`~nnseg.serve.automatic.models.UPLOAD_ENDINGS`); files are written under names the server makes (``<job>/input_0000.nii.gz``, ``<store>/<uuid>.nrrd``). A request body larger
than ``max_upload_bytes`` is refused with 413 before it is read (``Content-Length``) or as soon as it grows past the
limit (chunked uploads). A body must arrive within the request timeout plus 16 KiB/s (408 otherwise); headers
within the request timeout (:mod:`nnseg.serve.timeouts`).
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg.serve.auth import drain, send_json
from nnseg.serve.automatic.models import UPLOAD_ENDINGS, CaseError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
CHUNK = 1 << 20
MIN_BODY_RATE = 16 << 10  # bytes per second a request body must average after the first body_timeout_s


class UploadTooLarge(Exception):
    """The request body is larger than the server's limit (HTTP 413)."""


def too_large_message(limit: int) -> str:
    return (f"the upload is larger than this server's limit of {limit / 2**20:.1f} MiB; send a smaller file or start "
            "the server with a larger --max_upload_mb")


class RequestTimeout(Exception):
    """The request body arrives too slowly (HTTP 408)."""


class SizeLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` above ``limit`` (answered at once, from the declared
    length) or a chunked body growing past it; 408 for a body slower than ``body_timeout_s`` plus
    :data:`MIN_BODY_RATE` bytes per second (a slowloris upload holds no connection for long)."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, limit: int, body_timeout_s: float = 20.0) -> None:
        self.app = app
        self.limit = limit
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await drain(receive)
            await send_json(send, 413, too_large_message(self.limit), {"Connection": "close"})
            return
        await self.app(scope, self._counted(receive), send)

    def _counted(self, receive: Receive) -> Receive:
        seen, start, ended = 0, time.monotonic(), False

        async def counted() -> Message:
            nonlocal seen, ended
            if ended:  # the body is read: what follows is the disconnect, however late
                return await receive()
            left = start + self.body_timeout_s + seen / MIN_BODY_RATE - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except asyncio.TimeoutError:
                raise RequestTimeout(f"the request body arrived too slowly ({seen} bytes in "
                                     f"{time.monotonic() - start:.0f} s; at least {MIN_BODY_RATE // 1024} KiB/s after "
                                     f"the first {self.body_timeout_s:g} s); send it at once") from None
            seen += len(message.get("body", b""))
            ended = message.get("type") != "http.request" or not message.get("more_body")
            if seen > self.limit:
                if message.get("more_body"):
                    await drain(receive)
                raise UploadTooLarge(too_large_message(self.limit))
            return message

        return counted


def upload_ending(filename: str | None) -> str:
    """The allowed ending of an uploaded file's name (its only use).

    Raises:
        CaseError: (400) no file name or an ending the server does not read.
    """
    name = (filename or "").lower()
    for ending in UPLOAD_ENDINGS:
        if name.endswith(ending):
            return ending
    raise CaseError(f"uploaded file {filename!r} is not one of {', '.join(UPLOAD_ENDINGS)}; upload a NIfTI (.nii.gz), "
                    "NRRD or MHA image (the name's ending tells the format)")


async def save_upload(upload: Any, target: Path) -> None:
    """Copy a Starlette ``UploadFile`` to ``target`` (a server-made path)."""
    with open(target, "wb") as out:
        while chunk := await upload.read(CHUNK):
            out.write(chunk)


@dataclass
class StoredImage:
    path: Path
    added: float


class ImageStore:
    """Images uploaded with ``PUT /datastore/`` (3D Slicer uploads, then infers by id): few, short-lived.

    The client's id is only a dictionary key. At most ``capacity`` images are kept (the oldest goes), each for at
    most ``ttl_s`` seconds; files live in the store's own folder.
    """

    def __init__(self, folder: Path, *, capacity: int = 8, ttl_s: float = 3600.0) -> None:
        self.folder = folder
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._images: collections.OrderedDict[str, StoredImage] = collections.OrderedDict()
        self._lock = threading.Lock()

    def new_path(self, ending: str) -> Path:
        self.folder.mkdir(mode=0o700, exist_ok=True)
        return self.folder / f"{uuid.uuid4().hex}{ending}"

    def add(self, image_id: str, path: Path) -> None:
        with self._lock:
            old = self._images.pop(image_id, None)
            self._images[image_id] = StoredImage(path, time.time())
            drop = [old] if old else []
            while len(self._images) > self.capacity:
                drop.append(self._images.popitem(last=False)[1])
        for item in drop:
            item.path.unlink(missing_ok=True)
        self.sweep()

    def copy_to(self, image_id: str, target_folder: Path) -> Path:
        """Copy the image into a job folder (the stored file may be replaced meanwhile); KeyError if unknown."""
        self.sweep()
        with self._lock:
            item = self._images.get(image_id)
            if item is None:
                raise KeyError(f"no uploaded image {image_id!r}; upload it first (PUT /datastore/?image=ID) or send "
                               "the image with the request (file)")
            ending = next(e for e in UPLOAD_ENDINGS if item.path.name.endswith(e))
            target = target_folder / f"input_0000{ending}"
            shutil.copyfile(item.path, target)
        return target

    def count(self) -> int:
        with self._lock:
            return len(self._images)

    def sweep(self) -> None:
        now = time.time()
        with self._lock:
            old = [k for k, v in self._images.items() if now - v.added > self.ttl_s]
            drop = [self._images.pop(k) for k in old]
        for item in drop:
            item.path.unlink(missing_ok=True)

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
