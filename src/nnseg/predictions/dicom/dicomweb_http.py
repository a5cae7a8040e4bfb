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
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nnseg.predictions.dicom.dicomweb_multipart import (ROOT_HINT, DicomWebError, DicomWebLimits, MultipartFiles,
                                                  multipart_boundary, one_line)
from nnseg.raw.dicom import require

MAX_JSON_BYTES = 64 * 2**20
_WATCH = threading.local()
T = TypeVar("T")


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


def _adapter() -> Any:
    """A requests adapter whose connections (direct or through an HTTP proxy) the deadline watchdog can reach."""
    requests, urllib3 = require("requests"), require("urllib3")
    pools = {"http": type("Pool", (urllib3.HTTPConnectionPool,),
                          {"ConnectionCls": _watched(urllib3.connection.HTTPConnection)}),
             "https": type("TlsPool", (urllib3.HTTPSConnectionPool,),
                           {"ConnectionCls": _watched(urllib3.connection.HTTPSConnection)})}

    class Adapter(requests.adapters.HTTPAdapter):  # type: ignore[misc,name-defined]
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if type(manager) is urllib3.ProxyManager:  # SOCKS managers keep their own connection classes
                manager.pool_classes_by_scheme = pools
            return manager

    return Adapter()


def _session(root: str, headers: Mapping[str, str]) -> Any:
    requests = require("requests")
    private = {"authorization", "proxy-authorization", "cookie", *(name.lower() for name in headers)}
    home = origin(root)

    class Session(requests.Session):  # type: ignore[misc,name-defined]
        def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
            if origin(prepared_request.url) != home:
                for name in [n for n in prepared_request.headers if n.lower() in private]:
                    del prepared_request.headers[name]
                return
            super().rebuild_auth(prepared_request, response)

    session = Session()
    session.headers.update(headers)
    for prefix in ("http://", "https://"):
        session.mount(prefix, _adapter())
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


def _came_back(response: Any) -> str:
    kind = response.headers.get("Content-Type", "no Content-Type")
    try:
        start = next(response.iter_content(512), b"").decode("utf-8", "replace")
    except Exception:  # the body of an error answer is only shown; a broken one must not hide the status
        start = ""
    body = f", body {one_line(start, 80)!r}" if start.strip() else ""
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
            except OSError as e:  # requests' errors and DicomWebError are OSErrors; so is a full disk (raised as is)
                if fired.is_set():
                    raise DicomWebError(f"DICOMweb {what} {method} {url}: no complete answer within "
                                        f"{limits.deadline_s:g} s (the server is slow, stalled or trickling data); "
                                        "check the server, or raise --dicomweb-timeout") from None
                if isinstance(e, DicomWebError) or not isinstance(e, requests.RequestException):
                    raise
                raise DicomWebError(f"DICOMweb {what} {method} {url}: {_network_error(e)}; check that the server "
                                    "runs and is reachable from here, and the host and port of --dicomweb") from None

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
            parts = MultipartFiles(multipart_boundary(answer, url), folder, limits=self.limits, where=f"WADO-RS GET {url}")
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
    return one_line(f"{type(e).__name__}: {cause or e}", 200)


def _read_capped(answer: Any, cap: int, where: str) -> bytes:
    data = bytearray()
    for chunk in answer.iter_content(1 << 16):
        data += chunk
        if len(data) > cap:
            raise DicomWebError(f"DICOMweb {where}: the answer is larger than {cap / 2**20:.0f} MiB; {ROOT_HINT}")
    return bytes(data)


def _json_list(answer: Any) -> list[dict[str, Any]]:
    where = f"search GET {answer.url}"
    if answer.status_code == 204:
        return []
    raw = _read_capped(answer, MAX_JSON_BYTES, where)
    kind = answer.headers.get("Content-Type", "no Content-Type")
    try:
        data = json.loads(raw) if raw.strip() else []
    except ValueError:
        raise DicomWebError(f"DICOMweb QIDO-RS {where} answered {kind}, not JSON (starts with "
                            f"{one_line(raw[:200].decode('utf-8', 'replace'), 80)!r}); {ROOT_HINT}") from None
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
