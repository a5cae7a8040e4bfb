"""A streaming ``multipart/related`` parser for WADO-RS answers: each part's body goes to ``folder/NNNNN.dcm``.

Nothing of a part is held in memory beyond one network chunk and the delimiter's length; every part is capped
(:attr:`~DicomWebLimits.max_instance_bytes`), so is the whole answer (:attr:`~DicomWebLimits.max_series_bytes`), and
each part must start like a DICOM file (``DICM`` after the 128-byte preamble, then the file meta group). File names are numbers, never a value
from the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO

MAX_PART_HEADER_BYTES = 16 * 2**10
ROOT_HINT = "check that --dicomweb is the server's DICOMweb root (e.g. http://host:8042/dicom-web)"


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

    @classmethod
    def from_user(cls, *, timeout_s: float, max_instance_mb: float, max_series_gb: float) -> DicomWebLimits:
        """The limits as a user gives them (``--dicomweb-timeout`` S, ``--dicomweb-max-instance-mb``,
        ``--dicomweb-max-series-gb``; read timeout: at most 60 s).

        Raises:
            ValueError: a value that is not a positive number (the flag named).
        """
        values = {"--dicomweb-timeout": timeout_s, "--dicomweb-max-instance-mb": max_instance_mb,
                  "--dicomweb-max-series-gb": max_series_gb}
        for flag, value in values.items():
            if not value > 0:
                raise ValueError(f"{flag} {value} must be a positive number")
        return cls(deadline_s=timeout_s, read_timeout_s=min(60.0, timeout_s),
                   max_instance_bytes=int(max_instance_mb * 2**20), max_series_bytes=int(max_series_gb * 2**30))


def one_line(text: str, limit: int = 120) -> str:
    """``text`` on one line, shortened to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[:limit - 3]}..."


def multipart_boundary(answer: Any, url: str) -> bytes:
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
        if len(self.head) < 134:
            self.head += data[:134 - len(self.head)]
            if len(self.head) == 134:
                self._check_head()  # at once: a large part that is no DICOM file is not read on
        if self.out is not None:
            self.out.write(data)

    def _check_head(self) -> None:
        if self.head[128:132] != b"DICM" or self.head[132:134] != b"\x02\x00":
            raise self._fail(f"part {self.count + 1} is not a DICOM file (it starts with "
                             f"{one_line(self.head[:40].decode('latin-1'), 40)!r}, not a preamble, 'DICM' and the "
                             f"file meta group); {ROOT_HINT}")

    def _close_part(self, *, complete: bool) -> None:
        if self.out is None:
            return
        self.out.close()
        self.out = None
        if not complete:
            return
        self._check_head()
        self.count += 1
