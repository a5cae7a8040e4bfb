"""The HTTP side of ``--dicomweb``: QIDO-RS search, WADO-RS retrieval streamed to disk, STOW-RS store.

Over ``requests`` rather than dicomweb-client, which holds every retrieved instance in memory (a 400 MiB answer
took 2.3 GB), retries a 503 for 30 s into a ``RetryError``, and has no size caps. Here every request:

* has a total deadline (:attr:`DicomWebLimits.deadline_s`, default 600 s): a watchdog shuts the request's socket
  down when it passes, so a server that trickles a byte every few seconds (which restarts a plain read timeout) or
  never answers ends in one line, not a hang;
* streams its answer: WADO-RS multipart parts go to numbered files in a folder the caller owns (no name from the
  server), capped per instance and per series; JSON answers are capped at :data:`MAX_JSON_BYTES`;
* follows redirects only with the same origin's credentials: a redirect to another scheme, host or port drops
  ``Authorization``, cookies and every ``--header`` (requests itself drops only ``Authorization``, and only when the
  host changes);
* fails with one line (:class:`DicomWebError`) naming the request's URL, what came back (status, content type, the
  start of the body, or the network error) and what to check.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from nnseg.raw.dicom import require

MAX_JSON_BYTES = 64 * 2**20
MAX_PART_HEADER_BYTES = 16 * 2**10
ROOT_HINT = "check that --dicomweb is the server's DICOMweb root (e.g. http://host:8042/dicom-web)"
_WATCH = threading.local()
T = TypeVar("T")


class DicomWebError(ConnectionError):
    """A DICOMweb request that failed (one line: the URL, what came back, what to check)."""


@dataclass(frozen=True)
class DicomWebLimits:
    """Bounds of every DICOMweb request: a total deadline, connect/read timeouts, and retrieval size caps."""

    deadline_s: float = 600.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_instance_bytes: int = 2**30
    max_series_bytes: int = 16 * 2**30


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port made explicit for http/https."""
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(
        parts.scheme.lower())


def _watched(base: type) -> type:
    """A urllib3 connection class that registers itself with the current request's watchdog."""

    def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        conns = getattr(_WATCH, "conns", None)
        if conns is not None:
            conns.append(self)
        return base.request(self, *args, **kwargs)

    return type(f"Watched{base.__name__}", (base,), {"request": request})


def _session(root: str, headers: Mapping[str, str]) -> Any:
    requests, urllib3 = require("requests"), require("urllib3")
    private = {"authorization", "proxy-authorization", "cookie", *(name.lower() for name in headers)}
    home = origin(root)

    class Session(requests.Session):  # type: ignore[misc,name-defined]
        def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
            if origin(prepared_request.url) != home:
                for name in [n for n in prepared_request.headers if n.lower() in private]:
                    del prepared_request.headers[name]
                return
            super().rebuild_auth(prepared_request, response)

    http_pool = type("Pool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": _watched(urllib3.connection.HTTPConnection)})
    https_pool = type("TlsPool", (urllib3.HTTPSConnectionPool,),
                      {"ConnectionCls": _watched(urllib3.connection.HTTPSConnection)})
    session = Session()
    session.headers.update(headers)
    for adapter in session.adapters.values():
        adapter.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}
    return session


@contextmanager
def _deadline(seconds: float) -> Iterator[threading.Event]:
    """Shut down the sockets of the requests made inside the block when ``seconds`` pass; yields the 'fired' flag."""
    conns: list[Any] = []
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        for conn in list(conns):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    _WATCH.conns = conns
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
        _WATCH.conns = None


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[:limit - 3]}..."


def _came_back(response: Any) -> str:
    kind = response.headers.get("Content-Type", "no Content-Type")
    try:
        start = next(response.iter_content(512), b"").decode("utf-8", "replace")
    except Exception:  # the body of an error answer is only shown; a broken one must not hide the status
        start = ""
    body = f", body {_one_line(start, 80)!r}" if start.strip() else ""
    return f"HTTP {response.status_code} {response.reason or ''}".rstrip() + f" ({kind}{body})"


def _status_hint(status: int, response: Any) -> str:
    if status in (401, 403):
        return "pass credentials with --token or --header (e.g. --header 'Authorization: Basic ...')"
    if status == 404:
        return f"check --study/--series, and {ROOT_HINT}"
    if status >= 500:
        retry = response.headers.get("Retry-After")
        return (f"the server failed or is overloaded{f' (Retry-After: {retry})' if retry else ''}: retry later, or ask "
                "its administrator")
    return ROOT_HINT


class DicomWebClient:
    """QIDO-RS / WADO-RS / STOW-RS against one DICOMweb root, each request bounded by :class:`DicomWebLimits`."""

    def __init__(self, root: str, *, headers: Mapping[str, str] | None = None,
                 limits: DicomWebLimits = DicomWebLimits()) -> None:
        if origin(root)[0] not in ("http", "https") or not origin(root)[1]:
            raise ValueError(f"--dicomweb {root!r} is not an http(s) URL; give the DICOMweb root, e.g. "
                             "http://host:8042/dicom-web")
        self.root = root.rstrip("/")
        self.limits = limits
        self.session = _session(self.root, dict(headers or {}))

    def request(self, method: str, url: str, what: str, consume: Callable[[Any], T], **kwargs: Any) -> T:
        """Send a request and hand the streamed answer (2xx only) to ``consume``; every failure as one line.

        Raises:
            DicomWebError: an error status, a network error, the deadline passed, or what ``consume`` refused.
        """
        requests = require("requests")
        limits = self.limits
        with _deadline(limits.deadline_s) as fired:
            try:
                with self.session.request(method, url, stream=True, timeout=(limits.connect_timeout_s,
                                                                             limits.read_timeout_s), **kwargs) as answer:
                    if not 200 <= answer.status_code < 300:
                        raise DicomWebError(f"DICOMweb {what} {method} {answer.url} answered {_came_back(answer)}; "
                                            f"{_status_hint(answer.status_code, answer)}")
                    return consume(answer)
            except (requests.RequestException, DicomWebError, OSError) as e:
                if fired.is_set():
                    raise DicomWebError(f"DICOMweb {what} {method} {url}: no complete answer within "
                                        f"{limits.deadline_s:g} s (the server is slow, stalled or trickling data); "
                                        "check the server, or raise --dicomweb-timeout") from None
                if isinstance(e, DicomWebError):
                    raise
                raise DicomWebError(f"DICOMweb {what} {method} {url}: {_network_error(e)}; check that the server "
                                    f"runs and is reachable, and {ROOT_HINT}") from None

    def search_series(self, study: str, filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies/{study}/series``: the DICOM JSON objects of the series found (checked shape)."""
        url = f"{self.root}/studies/{study}/series"
        return self.request("GET", url, "QIDO-RS search", _json_list, params=dict(filters or {}),
                            headers={"Accept": "application/dicom+json"})

    def retrieve_series(self, study: str, series: str, folder: Path) -> int:
        """WADO-RS ``/studies/{study}/series/{series}`` into ``folder`` (``00000.dcm``, ...); the number of files."""
        url = f"{self.root}/studies/{study}/series/{series}"
        folder.mkdir(parents=True, exist_ok=True)

        def consume(answer: Any) -> int:
            parts = MultipartFiles(_boundary(answer, url), folder, limits=self.limits, where=f"WADO-RS GET {url}")
            try:
                for chunk in answer.iter_content(1 << 16):
                    parts.feed(chunk)
                return parts.finish()
            finally:
                parts.close()

        return self.request("GET", url, "WADO-RS retrieve", consume,
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})

    def store(self, study: str, path: Path) -> None:
        """STOW-RS one DICOM file into ``/studies/{study}``; refused instances (FailedSOPSequence) fail."""
        boundary = "nnseg-stow-boundary-7f3a9c"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
                + f"\r\n--{boundary}--\r\n".encode())
        url = f"{self.root}/studies/{study}"
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        self.request("POST", url, "STOW-RS store", lambda answer: _stow_result(answer, url), data=body,
                     headers={"Content-Type": content_type, "Accept": "application/dicom+json"})


def _network_error(e: BaseException) -> str:
    cause: BaseException | None = e
    while cause is not None and (cause.__cause__ or cause.__context__) is not None and not isinstance(
            cause, (socket.timeout, ConnectionRefusedError, socket.gaierror)):
        cause = cause.__cause__ or cause.__context__
    return _one_line(f"{type(e).__name__}: {cause or e}", 200)


def _read_capped(answer: Any, cap: int, where: str) -> bytes:
    data = bytearray()
    for chunk in answer.iter_content(1 << 16):
        data += chunk
        if len(data) > cap:
            raise DicomWebError(f"DICOMweb {where}: the answer is larger than {cap / 2**20:.0f} MiB; {ROOT_HINT}")
    return bytes(data)


def _json_list(answer: Any) -> list[dict[str, Any]]:
    where = f"GET {answer.url}"
    if answer.status_code == 204:
        return []
    raw = _read_capped(answer, MAX_JSON_BYTES, where)
    kind = answer.headers.get("Content-Type", "no Content-Type")
    try:
        data = json.loads(raw) if raw.strip() else []
    except ValueError:
        raise DicomWebError(f"DICOMweb QIDO-RS {where} answered {kind}, not JSON (starts with "
                            f"{_one_line(raw[:200].decode('utf-8', 'replace'), 80)!r}); {ROOT_HINT}") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        shape = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else type(data).__name__
        raise DicomWebError(f"DICOMweb QIDO-RS {where} answered JSON of the wrong shape ({shape}; expected a list "
                            f"of DICOM JSON objects); {ROOT_HINT}")
    return data


def _stow_result(answer: Any, url: str) -> None:
    raw = _read_capped(answer, MAX_JSON_BYTES, f"STOW-RS POST {url}")
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return  # an XML or empty answer with a 2xx status: stored
    failed = data.get("00081198", {}).get("Value") if isinstance(data, dict) else None
    if failed:
        reason = failed[0].get("00081197", {}).get("Value", ["?"])[0] if isinstance(failed[0], dict) else "?"
        raise DicomWebError(f"DICOMweb STOW-RS POST {url} refused the SEG (FailedSOPSequence, failure reason "
                            f"{reason}); check the server's log and that it accepts DICOM SEG objects")


def _boundary(answer: Any, url: str) -> bytes:
    kind = answer.headers.get("Content-Type", "")
    message = Message()
    message["Content-Type"] = kind
    boundary = message.get_param("boundary")
    if message.get_content_type() != "multipart/related" or not isinstance(boundary, str) or not boundary:
        raise DicomWebError(f"DICOMweb WADO-RS GET {url} answered {kind or 'no Content-Type'} (expected "
                            f"multipart/related with a boundary); {ROOT_HINT}")
    return boundary.encode("latin-1")


class MultipartFiles:
    """A streaming ``multipart/related`` parser writing each part's body to ``folder/NNNNN.dcm``, with size caps.

    Raises (from :meth:`feed` / :meth:`finish`):
        DicomWebError: a part or the series larger than the caps, a part that is not a DICOM file, a malformed or
            truncated answer.
    """

    def __init__(self, boundary: bytes, folder: Path, *, limits: DicomWebLimits, where: str) -> None:
        self.delimiter, self.folder, self.limits, self.where = b"--" + boundary, folder, limits, where
        self.buffer, self.state = b"", "preamble"
        self.out: BinaryIO | None = None
        self.count = self.part_bytes = self.total_bytes = 0
        self.head = b""

    def _fail(self, what: str) -> DicomWebError:
        return DicomWebError(f"DICOMweb {self.where}: {what}")

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while self._step():
            pass

    def close(self) -> None:
        """Close the part being written (after an error: the caller removes the folder)."""
        self._close_part(complete=False)

    def finish(self) -> int:
        """End of the answer: the number of files written (it must have ended with the closing delimiter)."""
        if self.state != "end":
            raise self._fail(f"the answer ended inside part {self.count + 1} (truncated; {self.total_bytes} bytes "
                             "received); retry, or check the server's log")
        return self.count

    def _step(self) -> bool:
        return {"preamble": self._preamble, "after": self._after_delimiter, "headers": self._headers,
                "body": self._body, "end": lambda: False}[self.state]()

    def _preamble(self) -> bool:
        at = self.buffer.find(self.delimiter)
        if at < 0:
            if len(self.buffer) > MAX_PART_HEADER_BYTES:
                raise self._fail(f"no multipart boundary in the first {len(self.buffer)} bytes; {ROOT_HINT}")
            return False
        self.buffer, self.state = self.buffer[at + len(self.delimiter):], "after"
        return True

    def _after_delimiter(self) -> bool:
        if len(self.buffer) < 2:
            return False
        if self.buffer.startswith(b"--"):
            self.state = "end"
            return False
        at = self.buffer.find(b"\r\n")
        if at < 0 or at > 256:
            if at > 256 or len(self.buffer) > 256:
                raise self._fail("a multipart boundary is not followed by a line break (malformed answer)")
            return False
        self.buffer, self.state = self.buffer[at + 2:], "headers"
        return True

    def _headers(self) -> bool:
        at = 0 if self.buffer.startswith(b"\r\n") else self.buffer.find(b"\r\n\r\n")
        if at < 0:
            if len(self.buffer) > MAX_PART_HEADER_BYTES:
                raise self._fail(f"part {self.count + 1} has more than {MAX_PART_HEADER_BYTES} bytes of headers")
            return False
        headers = self.buffer[:at].decode("latin-1").lower()
        kind = next((ln.split(":", 1)[1].strip() for ln in headers.split("\r\n") if ln.startswith("content-type:")), "")
        if kind and not kind.startswith("application/dicom"):
            raise self._fail(f"part {self.count + 1} is {kind}, not application/dicom; {ROOT_HINT}")
        self.buffer = self.buffer[at + (2 if at == 0 else 4):]
        self.out, self.part_bytes, self.head, self.state = open(self.folder / f"{self.count:05d}.dcm", "wb"), 0, b"", "body"
        return True

    def _body(self) -> bool:
        end = b"\r\n" + self.delimiter
        at = self.buffer.find(end)
        keep = len(self.buffer) - (len(end) - 1) if at < 0 else at
        if keep > 0:
            self._write(self.buffer[:keep])
            self.buffer = self.buffer[keep:]
        if at < 0:
            return False
        self._close_part(complete=True)
        self.buffer, self.state = self.buffer[len(end):], "after"
        return True

    def _write(self, data: bytes) -> None:
        self.part_bytes += len(data)
        self.total_bytes += len(data)
        limits = self.limits
        if self.part_bytes > limits.max_instance_bytes:
            raise self._fail(f"instance {self.count + 1} is larger than {limits.max_instance_bytes / 2**20:.0f} MiB "
                             "(--dicomweb-max-instance-mb); a single image slice is far smaller: check the series, or "
                             "raise the cap")
        if self.total_bytes > limits.max_series_bytes:
            raise self._fail(f"the series is larger than {limits.max_series_bytes / 2**30:.1f} GiB after "
                             f"{self.count} instance(s) (--dicomweb-max-series-gb); raise the cap if it is that large")
        if len(self.head) < 132:
            self.head += data[:132 - len(self.head)]
        if self.out is not None:
            self.out.write(data)

    def _close_part(self, *, complete: bool) -> None:
        if self.out is None:
            return
        self.out.close()
        self.out = None
        if not complete:
            return
        if self.head[128:132] != b"DICM":
            raise self._fail(f"part {self.count + 1} ({self.part_bytes} bytes) is not a DICOM file (starts with "
                             f"{_one_line(self.head[:40].decode('latin-1'), 40)!r}); {ROOT_HINT}")
        self.count += 1
