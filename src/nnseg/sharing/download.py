"""Download a model zip by URL and install it (nnU-Net's ``nnUNetv2_download_pretrained_model_by_url``).

Unlike nnU-Net, the download is resumable: bytes go to ``<cache_dir>/<key>_<name>.part`` (the key is derived from the
URL, so the same URL always finds its partial file) and an interrupted transfer continues with an HTTP ``Range``
request, both within one call (``retries``) and in a later call. Servers that ignore ``Range`` (status 200) restart
the file; status 416 on a complete partial file means "already downloaded". An optional SHA-256 is checked before
the zip is installed with :func:`nnseg.sharing.install.install_model_zip` (entries escaping the results folder
are refused). Only the standard library (``urllib``) is used for HTTP(S).
"""

from __future__ import annotations

import hashlib
import http.client
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from nnseg._types import PathLike
from nnseg.sharing.install import install_model_zip
from nnseg.sharing.zip_limits import ZipLimits

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
CHUNK_SIZE = 1 << 16
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_TOTAL_RE = re.compile(r"bytes\s+\*/(\d+)")


class IncompleteDownload(Exception):
    """The connection ended before all bytes arrived (the partial file is kept for resuming)."""


def check_url(url: str) -> str:
    """Return ``url`` if it is an http(s) URL with a host, else raise ValueError."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"cannot download {url!r}: only http:// and https:// URLs are supported")
    return url


def cache_file_for(url: str, cache_dir: PathLike) -> Path:
    """The partial-download file of ``url`` in ``cache_dir`` (stable per URL, so a later call resumes it)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "model.zip"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    key = hashlib.sha1(url.encode("utf-8")).hexdigest()[:12]
    return Path(cache_dir) / f"{key}_{name}.part"


def sha256_of(path: PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _handle_416(error: urllib.error.HTTPError, part: Path, offset: int) -> None:
    """Range not satisfiable: the partial file is complete (return) or bad (deleted; retry from scratch)."""
    match = _TOTAL_RE.search(error.headers.get("Content-Range", "") or "")
    error.close()
    if match and int(match.group(1)) == offset:
        return
    part.unlink(missing_ok=True)
    raise IncompleteDownload(f"server refused to resume at byte {offset}; starting over")


def _response_range(resp: http.client.HTTPResponse, offset: int, part: Path) -> tuple[int, int | None]:
    """``(start, total)`` of the response body: 206 continues at ``offset``, 200 restarts at 0."""
    length = resp.headers.get("Content-Length")
    if resp.status == 206:
        match = _RANGE_RE.search(resp.headers.get("Content-Range", "") or "")
        if not match or int(match.group(1)) != offset:
            part.unlink(missing_ok=True)
            raise IncompleteDownload(f"server answered the request for byte {offset} with "
                                     f"Content-Range {resp.headers.get('Content-Range')!r}; starting over")
        return offset, None if match.group(3) == "*" else int(match.group(3))
    return 0, int(length) if length is not None and length.isdigit() else None


def _attempt(url: str, part: Path, *, timeout: float, bar: tqdm) -> None:
    """One HTTP request that appends to ``part`` (raises IncompleteDownload if the body ends early)."""
    offset = _size(part)
    headers = {"User-Agent": "nnseg", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            _handle_416(e, part, offset)
            return
        raise
    with resp:
        start, total = _response_range(resp, offset, part)
        bar.reset(total=total)
        bar.update(start)
        with part.open("ab" if start else "wb") as f:
            while chunk := resp.read(CHUNK_SIZE):
                f.write(chunk)
                bar.update(len(chunk))
    size = _size(part)
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise IncompleteDownload(f"connection closed after {size} of {total} bytes")


def _http_error_message(url: str, e: urllib.error.HTTPError) -> str:
    return f"download of {url} failed: HTTP {e.code} {e.reason}; check the URL (and that you may access it)"


def download_file(url: str, part: PathLike, *, progress: bool = True, timeout: float = DEFAULT_TIMEOUT,
                  retries: int = DEFAULT_RETRIES, retry_wait: float = 1.0) -> Path:
    """Download ``url`` into ``part``, resuming what is already there; retries interrupted transfers.

    Args:
        url: http(s) URL.
        part: the partial file (kept on failure so that a later call resumes it).
        progress: show a tqdm progress bar (bytes).
        timeout: seconds to wait for the connection and for each read.
        retries: further attempts after an interrupted or failed (timeout, reset, HTTP 5xx/429) request.
        retry_wait: seconds before the first retry (doubled each time).

    Returns:
        ``part``, now complete.

    Raises:
        ValueError: not an http(s) URL, or the server answered with a client error (404, 403, ...).
        RuntimeError: still incomplete after all attempts (the message says how to resume).
    """
    check_url(url)
    if retries < 0 or timeout <= 0:
        raise ValueError(f"retries={retries} and timeout={timeout} must be >= 0 and > 0")
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(desc=part.name.removesuffix(".part"), unit="B", unit_scale=True, unit_divisor=1024,
              disable=not progress, leave=False) as bar:
        last = _attempts(url, part, bar=bar, timeout=timeout, retries=retries, retry_wait=retry_wait)
    if last is None:
        return part
    raise RuntimeError(f"download of {url} did not complete after {retries + 1} attempts (last error: {last}); "
                       f"{_size(part)} bytes are kept in {part}: run the same command again to resume")


def _attempts(url: str, part: Path, *, bar: tqdm, timeout: float, retries: int, retry_wait: float) -> Exception | None:
    """Try up to ``retries + 1`` times; None on success, else the last error."""
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_wait * 2 ** (attempt - 1))
        try:
            _attempt(url, part, timeout=timeout, bar=bar)
            return None
        except urllib.error.HTTPError as e:
            e.close()
            if e.code not in _RETRY_HTTP:
                raise ValueError(_http_error_message(url, e)) from None
            last = e
        except (IncompleteDownload, urllib.error.URLError, http.client.HTTPException, OSError) as e:
            last = e
    return last


def download_model(url: str, results_root: PathLike, *, sha256: str | None = None, cache_dir: PathLike | None = None,
                   progress: bool = True, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                   retry_wait: float = 1.0, limits: ZipLimits | None = None) -> list[Path]:
    """Download a model zip (resumable), check its SHA-256 if given, and install it into ``results_root``.

    Args:
        url: http(s) URL of a zip written by ``nnUNetv2_export_model_to_zip``.
        results_root: ``nnUNet_results``.
        sha256: expected hex SHA-256 of the zip (optional).
        cache_dir: folder for the partial download (default ``results_root/.nnseg_downloads``).
        progress, timeout, retries, retry_wait: see :func:`download_file`.
        limits: size / compression-ratio limits of the zip (:class:`nnseg.sharing.zip_limits.ZipLimits`).

    Returns:
        The installed model folders.

    Raises:
        ValueError: bad URL or SHA-256 text, HTTP client error, checksum mismatch (the file is deleted), or the
            download is not a safe model zip (deleted).
        RuntimeError: the download could not be completed (rerun to resume).
    """
    check_url(url)
    if sha256 is not None and not _SHA_RE.match(sha256):
        raise ValueError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal characters)")
    results_root = Path(results_root)
    part = cache_file_for(url, results_root / ".nnseg_downloads" if cache_dir is None else cache_dir)
    download_file(url, part, progress=progress, timeout=timeout, retries=retries, retry_wait=retry_wait)
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise ValueError(f"SHA-256 of the download from {url} is {actual}, expected {sha256.lower()}; the file "
                             "was deleted. Check the URL and the checksum")
    try:
        return install_model_zip(part, results_root, limits=limits)
    finally:
        part.unlink(missing_ok=True)
