"""A DICOMweb server on 127.0.0.1 (a free port) whose answers each test chooses: the normal QIDO/WADO/STOW of a
study, or a fault (an error status, HTML, the wrong JSON, silence, a trickle, a redirect, an oversized answer).

``FakeDicomWeb(handler)`` runs ``handler(request)`` for every request in a server thread; ``study_handler`` answers
like a real archive from DICOM files on disk. Every request (method, path, headers) is recorded in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

BOUNDARY = "fake-boundary-42"
Handler = Callable[["Request"], None]


class Request(BaseHTTPRequestHandler):
    """One request; ``self.server.fake`` is the :class:`FakeDicomWeb`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _handle(self) -> None:
        fake: FakeDicomWeb = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        fake.requests.append((self.command, self.path, dict(self.headers.items())))
        try:
            fake.handler(self)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = _handle

    def answer(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def json(self, data: object, status: int = 200) -> None:
        self.answer(status, json.dumps(data).encode(), "application/dicom+json")

    def multipart(self, parts: Sequence[bytes]) -> None:
        self.answer(200, multipart_body(parts), f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')


def multipart_body(parts: Sequence[bytes]) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + p + b"\r\n" for p in parts) + f"--{BOUNDARY}--\r\n".encode()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:  # a client that hangs up is expected
        pass


class FakeDicomWeb:
    """The server: ``url`` is its DICOMweb root; ``stopping`` is set at the end (handlers that wait watch it)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.stopping = threading.Event()
        self.server = _Server(("127.0.0.1", 0), Request)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.fake = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.origin}/dicom-web"

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextmanager
def fake_dicomweb(handler: Handler) -> Iterator[FakeDicomWeb]:
    server = FakeDicomWeb(handler)
    server.thread.start()
    try:
        yield server
    finally:
        server.stop()


def series_json(uid: str, modality: str = "CT") -> dict[str, object]:
    return {"0020000E": {"vr": "UI", "Value": [uid]}, "00080060": {"vr": "CS", "Value": [modality]}}


def study_handler(series: Mapping[str, Sequence[Path]], *, stored: list[bytes] | None = None) -> Handler:
    """Answers of an archive holding ``series`` (UID -> files): QIDO lists them (a SEG search finds none), WADO-RS
    sends their files, STOW-RS keeps the posted body in ``stored``."""

    def handle(request: Request) -> None:
        path = urlsplit(request.path).path
        if request.command == "POST":
            if stored is not None:
                stored.append(request.body)
            request.json({})
        elif path.endswith("/series") and "SeriesInstanceUID=" in (urlsplit(request.path).query or ""):
            request.json([])
        elif path.endswith("/series"):
            request.json([series_json(uid) for uid in series])
        else:
            uid = path.rsplit("/", 1)[-1]
            request.multipart([f.read_bytes() for f in series.get(uid, [])])

    return handle


def trickle(request: Request, *, every_s: float = 0.2) -> None:
    """A 200 multipart answer declaring 1 MB, sent one byte per ``every_s`` until the server stops."""
    request.send_response(200)
    request.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
    request.send_header("Content-Length", str(10**6))
    request.end_headers()
    while not request.server.fake.stopping.wait(every_s):  # type: ignore[attr-defined]
        request.wfile.write(b"-")
        request.wfile.flush()


def silent(request: Request) -> None:
    """Accept the request and never answer (until the server stops)."""
    request.server.fake.stopping.wait(120)  # type: ignore[attr-defined]


def slow_headers(request: Request, *, every_s: float = 0.2) -> None:
    """Send the status line one byte at a time, forever: each byte restarts a plain read timeout."""
    line = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 10**6
    for byte in line:
        if request.server.fake.stopping.wait(every_s):  # type: ignore[attr-defined]
            return
        request.wfile.write(bytes([byte]))
        request.wfile.flush()


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
