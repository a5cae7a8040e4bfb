"""``nnseg predict --dicomweb`` against a misbehaving server on 127.0.0.1 (issue 24.1, 24.7, 24.8, 24.9).

A fake DICOMweb server (``dicomweb_fake``) answers each test's way: UIDs that are paths, a redirect to another origin,
oversized or trickling answers, 503, HTML, the wrong JSON, silence. Each run: exit code 1, one line naming the URL,
what came back and what to check, within the deadline; nothing written in or outside the output folder, no temporary
folder left.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_synth import write_series
from dicomweb_fake import (Request, fake_dicomweb, multipart_body, series_json, silent, slow_headers, study_handler,
                           trickle)
from golden_model import install_golden_model

from nnseg.cli.main import main

pydicom = pytest.importorskip("pydicom")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*for VR UI")]
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_golden_model(tmp_path_factory.mktemp("dicomweb_faults") / "results")


@pytest.fixture
def run(model: Path, tmp_path: Path, scratch: Path, capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, float]]:
    """Run the CLI against ``url``; returns (exit code, stderr, seconds)."""
    def call(url: str, *extra: str, study: str = STUDY) -> tuple[int, str, float]:
        start = time.monotonic()
        code = main(["predict-from-modelfolder", "-m", str(model), "-o", str(tmp_path / "out"), "-f", "0", "-device",
                     "cpu", "--disable_tta", "--dicomweb", url, "--study", study, *extra])
        return code, capsys.readouterr().err, time.monotonic() - start
    return call


def _refused(tmp_path: Path, scratch: Path, code: int, err: str, *fragments: str) -> str:
    """Exit 1 with exactly one error line holding ``fragments``; nothing written anywhere."""
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "out").exists() and list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "upload") == ["tmp"]
    return lines[0]


def _dicom_part(size: int) -> bytes:
    return bytes(128) + b"DICM\x02\x00" + bytes(size - 134)


def _series_files(folder: Path, uid: str = SERIES, n: int = 4) -> list[Path]:
    return write_series(np.zeros((n, 16, 16)), folder, study_uid=STUDY, series_uid=uid, spacing=(1.0, 1.0, 2.0))


def _qido_then(wado: Callable[[Request], None]) -> Callable[[Request], None]:
    def handle(request: Request) -> None:
        if request.path.split("?")[0].endswith("/series"):
            request.json([] if "SeriesInstanceUID=" in request.path else [series_json(SERIES)])
        else:
            wado(request)
    return handle


# 24.1: no UID from the server or the command line forms a path or a URL

def test_a_series_uid_from_qido_that_is_a_path_is_refused_before_any_retrieval(run: Callable, tmp_path: Path,
                                                                               scratch: Path) -> None:
    evil = "../../../../evil"
    with fake_dicomweb(lambda r: r.json([series_json(evil)])) as server:
        code, err, _ = run(server.url)
    _refused(tmp_path, scratch, code, err, f"the QIDO-RS answer of {server.url}/studies/{STUDY}/series", repr(evil),
             "is not a DICOM UID")
    assert [path for _, path, _ in server.requests] == [f"/dicom-web/studies/{STUDY}/series"]


def test_retrieved_instances_whose_series_uid_is_an_absolute_path_are_refused(run: Callable, tmp_path: Path,
                                                                              scratch: Path) -> None:
    evil = str(tmp_path / "evil")
    files = _series_files(tmp_path / "upload", uid=evil)
    with fake_dicomweb(_qido_then(lambda r: r.multipart([f.read_bytes() for f in files]))) as server:
        code, err, _ = run(server.url)
    assert code == 1 and "Traceback" not in err
    refusals = [ln for ln in err.splitlines() if ln.startswith("nnseg: refused:")]
    assert len(refusals) == 1 and refusals[0].startswith(f"nnseg: refused: series {SERIES}: the retrieved instance "
                                                         "00000.dcm has the SeriesInstanceUID (0020,000E)"), err
    assert f"{evil!r}, which is not a DICOM UID" in refusals[0] and str(scratch) not in refusals[0]
    assert f"1 refused: ['{SERIES}']" in err
    assert not list(tmp_path.rglob("evil*")) and not list(Path(evil).parent.glob("evil*"))
    assert list(scratch.iterdir()) == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--study", "--series"])
def test_a_command_line_uid_that_is_no_uid_is_refused_before_any_request(run: Callable, tmp_path: Path, scratch: Path,
                                                                         flag: str) -> None:
    with fake_dicomweb(silent) as server:
        extra = ("--series", "1.2/../../x") if flag == "--series" else ()
        code, err, _ = run(server.url, *extra, study="1.2/../../x" if flag == "--study" else STUDY)
    _refused(tmp_path, scratch, code, err, flag, "'1.2/../../x'", "is not a DICOM UID")
    assert server.requests == []


# 24.7: credentials and custom headers never cross origins

def test_a_redirect_to_another_origin_carries_no_credentials_or_custom_headers(run: Callable, tmp_path: Path,
                                                                               scratch: Path) -> None:
    with fake_dicomweb(lambda r: r.json({"error": "who are you"}, status=401)) as other:
        def redirect(request: Request) -> None:
            request.answer(302, b"", "text/plain", {"Location": f"{other.origin}{request.path}"})

        with fake_dicomweb(redirect) as server:
            code, err, _ = run(server.url, "--header", "X-Api-Key: K", "--token", "T", "--header", "Cookie: c=1")
    _refused(tmp_path, scratch, code, err, f"GET {other.url}/studies/{STUDY}/series", "HTTP 401",
             "--token or --header")
    (_, _, sent), = server.requests
    assert sent["X-Api-Key"] == "K" and sent["Authorization"] == "Bearer T"
    (_, _, received), = other.requests
    assert not {"x-api-key", "authorization", "cookie"} & {name.lower() for name in received}, received


def test_a_redirect_within_the_origin_keeps_the_headers() -> None:
    from nnseg.predictions.dicom.dicomweb_http import DicomWebClient

    def handle(request: Request) -> None:
        if request.path.startswith("/dicom-web/"):
            request.answer(301, b"", "text/plain", {"Location": request.path.replace("/dicom-web/", "/moved/")})
        else:
            request.json([series_json(SERIES)])

    with fake_dicomweb(handle) as server:
        found = DicomWebClient(server.url, headers={"X-Api-Key": "K", "Authorization": "Basic a"}).search_series(STUDY)
    assert found == [series_json(SERIES)]
    assert [(p, h["X-Api-Key"], h["Authorization"]) for _, p, h in server.requests] == [
        (f"/dicom-web/studies/{STUDY}/series", "K", "Basic a"), (f"/moved/studies/{STUDY}/series", "K", "Basic a")]


# 24.8: streamed to disk, capped per instance and series, a total deadline per request

def test_an_instance_over_the_cap_is_refused(run: Callable, tmp_path: Path, scratch: Path) -> None:
    with fake_dicomweb(_qido_then(lambda r: r.multipart([_dicom_part(3 * 2**20)]))) as server:
        code, err, _ = run(server.url, "--dicomweb-max-instance-mb", "1")
    _refused(tmp_path, scratch, code, err, f"WADO-RS GET {server.url}/studies/{STUDY}/series/{SERIES}",
             "instance 1 is larger than 1 MiB", "--dicomweb-max-instance-mb")


def test_a_series_over_the_cap_is_refused(run: Callable, tmp_path: Path, scratch: Path) -> None:
    with fake_dicomweb(_qido_then(lambda r: r.multipart([_dicom_part(400_000)] * 4))) as server:
        code, err, _ = run(server.url, "--dicomweb-max-series-gb", "0.001")
    _refused(tmp_path, scratch, code, err, "the series is larger than 0.0 GiB after 2 instance(s)",
             "--dicomweb-max-series-gb")


def test_a_large_answer_is_streamed_to_disk_not_held_in_memory(tmp_path: Path) -> None:
    from nnseg.predictions.dicom.dicomweb_http import DicomWebClient

    body = multipart_body([_dicom_part(48 * 2**20), _dicom_part(1000)])
    with fake_dicomweb(lambda r: r.answer(200, body, f'multipart/related; type="application/dicom"; '
                                          'boundary=fake-boundary-42')) as server:
        tracemalloc.start()
        try:
            count = DicomWebClient(server.url).retrieve_series(STUDY, SERIES, tmp_path / "series")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert count == 2 and (tmp_path / "series" / "00000.dcm").stat().st_size == 48 * 2**20
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB of Python memory for a 48 MiB answer"


@pytest.mark.parametrize("kind", ["trickling body", "trickling headers"])
def test_a_trickling_server_fails_at_the_deadline(run: Callable, tmp_path: Path, scratch: Path, kind: str) -> None:
    handler = _qido_then(trickle) if kind == "trickling body" else slow_headers
    with fake_dicomweb(handler) as server:
        code, err, seconds = run(server.url, "--dicomweb-timeout", "2")
    _refused(tmp_path, scratch, code, err, server.url, "no complete answer within 2 s", "--dicomweb-timeout")
    assert seconds < 15


@pytest.mark.parametrize(("answer", "message"), [
    (lambda r: r.answer(200, multipart_body([_dicom_part(500)])[:-40], 'multipart/related; boundary=fake-boundary-42'),
     "the answer ended inside part 1 (truncated"),
    (lambda r: r.multipart([b"<html>not dicom</html>"]), "part 1 is not a DICOM file (it starts with '<html>"),
    (lambda r: r.answer(200, b"<html>login</html>", "text/html"), "answered text/html (expected multipart/related"),
    (lambda r: r.answer(200, b"x" * 100, "multipart/related"), "answered multipart/related (expected multipart/related "
     "with a boundary)")])
def test_a_malformed_wado_answer_is_refused(run: Callable, tmp_path: Path, scratch: Path, answer: Any,
                                            message: str) -> None:
    with fake_dicomweb(_qido_then(answer)) as server:
        code, err, _ = run(server.url)
    _refused(tmp_path, scratch, code, err, f"WADO-RS GET {server.url}/studies/{STUDY}/series/{SERIES}", message)


# 24.9: every error answer is one line naming the URL, what came back, and what to check

@pytest.mark.parametrize(("answer", "fragments"), [
    (lambda r: r.answer(503, b"busy", "text/plain", {"Retry-After": "5"}),
     ["answered HTTP 503 Service Unavailable (text/plain, body 'busy')", "Retry-After: 5", "retry later"]),
    (lambda r: r.answer(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html"),
     ["answered text/html, not JSON (starts with '<!DOCTYPE html>", "DICOMweb root"]),
    (lambda r: r.json({"not": "a list"}), ["JSON of the wrong shape (an object with keys ['not']", "DICOMweb root"]),
    (lambda r: r.json([1, 2]), ["JSON of the wrong shape (list", "DICOMweb root"]),
    (lambda r: r.answer(404, b"", "text/plain"), ["HTTP 404 Not Found", "check --study/--series"])])
def test_an_error_answer_is_one_line_at_once(run: Callable, tmp_path: Path, scratch: Path, answer: Any,
                                             fragments: list[str]) -> None:
    with fake_dicomweb(answer) as server:
        code, err, seconds = run(server.url)
    _refused(tmp_path, scratch, code, err, f"GET {server.url}/studies/{STUDY}/series", *fragments)
    assert seconds < 10 and len(server.requests) == 1  # no retries


def test_a_server_that_never_answers_fails_at_the_deadline(run: Callable, tmp_path: Path, scratch: Path) -> None:
    with fake_dicomweb(silent) as server:
        code, err, seconds = run(server.url, "--dicomweb-timeout", "2")
    _refused(tmp_path, scratch, code, err, f"GET {server.url}/studies/{STUDY}/series", "check")
    assert seconds < 15


def test_a_server_that_is_not_there_is_one_line(run: Callable, tmp_path: Path, scratch: Path) -> None:
    with fake_dicomweb(silent) as server:
        url = server.url
    code, err, seconds = run(url)
    _refused(tmp_path, scratch, code, err, f"GET {url}/studies/{STUDY}/series", "ConnectionError",
             "check that the server runs and is reachable")
    assert seconds < 15


def test_a_stow_refusal_is_one_line(run: Callable, tmp_path: Path, scratch: Path) -> None:
    files = _series_files(tmp_path / "upload", n=6)
    base = study_handler({SERIES: files})

    def handle(request: Request) -> None:
        if request.command == "POST":
            request.json({"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [272]}}]}}, status=409)
        else:
            base(request)

    with fake_dicomweb(handle) as server:
        code, err, _ = run(server.url)
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 1 and len(lines) == 1 and f"STOW-RS store POST {server.url}/studies/{STUDY}" in lines[0], err
    assert "HTTP 409" in lines[0] and list(scratch.iterdir()) == []


def test_a_normal_study_is_stored(run: Callable, tmp_path: Path, scratch: Path) -> None:
    import highdicom as hd

    files = _series_files(tmp_path / "upload", n=6)
    stored: list[bytes] = []
    with fake_dicomweb(study_handler({SERIES: files}, stored=stored)) as server:
        code, err, _ = run(server.url, "--header", "X-Api-Key: K")
    assert code == 0, err
    assert "stored 1 SEG(s), 0 series skipped" in err and len(stored) == 1
    (seg_file,) = (tmp_path / "out").glob("*.dcm")
    assert seg_file.name == f"{SERIES.replace('.', '_')}.dcm" and seg_file.read_bytes() in stored[0]
    assert hd.seg.segread(seg_file).ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES
    assert all(h.get("X-Api-Key") == "K" for _, _, h in server.requests) and list(scratch.iterdir()) == []
