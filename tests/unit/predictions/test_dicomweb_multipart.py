"""The streaming WADO-RS multipart parser: parts are written whole whatever the network chunking, caps hold, and
malformed answers fail with one line (issue 24.8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnseg.predictions.dicom.dicomweb_http import origin
from nnseg.predictions.dicom.dicomweb_multipart import DicomWebError, DicomWebLimits, MultipartFiles

BOUNDARY = b"b0und4ry"


def _part(rng: np.random.Generator, size: int) -> bytes:
    # the payload holds near-delimiters ("\r\n--b0und4r") that must not end a part
    return bytes(128) + b"DICM\x02\x00" + rng.integers(0, 256, size).astype(np.uint8).tobytes() + b"\r\n--b0und4r" + b"x"


def _body(parts: list[bytes], *, preamble: bytes = b"", headers: bytes = b"Content-Type: application/dicom\r\n") -> bytes:
    out = preamble
    for p in parts:
        out += b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n" + p + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


def _parse(body: bytes, folder: Path, chunks: list[int], limits: DicomWebLimits = DicomWebLimits()) -> int:
    folder.mkdir(exist_ok=True)
    parser = MultipartFiles(BOUNDARY, folder, limits=limits, where="WADO-RS GET http://h/x")
    start = 0
    try:
        for size in chunks:
            parser.feed(body[start:start + size])
            start += size
        parser.feed(body[start:])
        return parser.finish()
    finally:
        parser.close()


@pytest.mark.parametrize("chunking", ["bytewise", "random", "whole"])
def test_parts_are_written_whole_whatever_the_chunking(tmp_path: Path, chunking: str) -> None:
    rng = np.random.default_rng(3)
    parts = [_part(rng, n) for n in (0, 5, 3000)]
    body = _body(parts, preamble=b"ignored preamble\r\n")
    chunks = {"bytewise": [1] * len(body), "random": list(rng.integers(1, 50, 400)), "whole": []}[chunking]
    assert _parse(body, tmp_path, chunks) == 3
    assert [(tmp_path / f"{k:05d}.dcm").read_bytes() for k in range(3)] == parts


def test_parts_without_headers_are_accepted(tmp_path: Path) -> None:
    parts = [_part(np.random.default_rng(0), 10)]
    assert _parse(_body(parts, headers=b""), tmp_path, [7] * 30) == 1


@pytest.mark.parametrize(("body", "message"), [
    (_body([b"x" * 200]), "part 1 is not a DICOM file (it starts with 'xxxx"),
    (_body([bytes(128) + b"DICM" + bytes(2000)]), "part 1 is not a DICOM file"),
    (_body([bytes(128) + b"DICM"]), "part 1 is not a DICOM file"),
    (_body([bytes(128) + b"DICM\x02\x00"])[:-30], "ended inside part 1 (truncated"),
    (b"no boundary at all" * 2000, "no multipart boundary in the first"),
    (_body([bytes(132)], headers=b"Content-Type: text/html\r\n"), "part 1 is text/html, not application/dicom"),
    (b"--" + BOUNDARY + b"\r\n" + b"X: y" * 5000, "part 1 has more than 16384 bytes of headers")])
def test_malformed_answers_fail_with_one_line(tmp_path: Path, body: bytes, message: str) -> None:
    with pytest.raises(DicomWebError, match="^DICOMweb WADO-RS GET http://h/x: ") as info:
        _parse(body, tmp_path, [100] * 10)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_caps_per_instance_and_series(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    body = _body([_part(rng, 1000), _part(rng, 1000), _part(rng, 1000)])
    with pytest.raises(DicomWebError, match="instance 2 is larger than"):
        _parse(_body([_part(rng, 10), _part(rng, 5000)]), tmp_path / "a", [], DicomWebLimits(max_instance_bytes=2000))
    with pytest.raises(DicomWebError, match=r"the series is larger than .* after 2 instance\(s\)"):
        _parse(body, tmp_path / "b", [64] * 100, DicomWebLimits(max_series_bytes=2500))


def test_origins() -> None:
    assert origin("http://Host/dicom-web") == origin("http://host:80/other") == ("http", "host", 80)
    assert origin("https://host/x") != origin("http://host/x") and origin("http://host:8042/") != origin("http://host/")
