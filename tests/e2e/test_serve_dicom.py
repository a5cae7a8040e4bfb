"""``nnseg serve`` takes a zip of one DICOM series: the real server (uvicorn subprocess, 127.0.0.1, free port).

A golden Hippocampus case is written as a CT series (rescale slope 1/8, so the reader must apply it) and zipped. The
server's answer equals ``nnseg predict -i <that dicom folder>`` (NIfTI, synchronously and as a job in NRRD, and via
MONAI Label's ``/infer``), ``result_format=dicom-seg`` gives a SEG that highdicom reads with the same labels, and bad
zips are refused with JSON 400/413/422 naming the problem, never a server path; no file is left behind.
"""

from __future__ import annotations

import io
import os
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import write_series
from golden_model import IMAGES, install_golden_model
from test_serve import AUTH, NAME, TOKEN, _files_under, _seg, _start

from nnseg.cli.main import main

pytestmark = [pytest.mark.golden, pytest.mark.slow]
CASE = "hippocampus_020"


def _zip(folder: Path, *, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("serve_dicom")
    model = install_golden_model(root / "results")
    image_file = IMAGES / f"{CASE}.nii.gz"
    image = sitk.ReadImage(str(image_file))
    geometry = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()}
    files = write_series(sitk.GetArrayFromImage(image), root / "dicom" / "series", modality="CT", slope=0.125,
                         **geometry)
    assert main(["predict-from-modelfolder", "-i", str(root / "dicom"), "-o", str(root / "ref"), "-m", str(model),
                 "-f", "0", "-device", "cpu", "--precision", "fp32", "--disable_tta", "--disable_progress_bar",
                 "-npp", "0", "-nps", "0"]) == 0
    (ref,) = (root / "ref").glob("*.nii.gz")
    return {"root": root, "model": model, "files": files, "ref": ref, "zip": _zip(root / "dicom"),
            "array": sitk.GetArrayFromImage(image), "geometry": geometry}


@pytest.fixture(scope="module")
def server(dicom_case: dict[str, object]) -> dict[str, object]:
    root = dicom_case["root"]
    tmp = root / "server_tmp"  # type: ignore[operator]
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "NNSEG_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "2"}
    proc, url, lines = _start(["--models", str(dicom_case["model"]), "--port", "0", "-f", "0", "-device", "cpu",
                               "--precision", "fp32", "--disable_tta", "--max_upload_mb", "1", "--log_level", "warning"],
                              env)
    yield {"url": url, "tmp": tmp, "lines": lines, "name": NAME}
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]


def _same_labels(data: bytes, ref: Path, ending: str = ".nii.gz") -> None:
    image, expected = _seg(data, ending), sitk.ReadImage(str(ref))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
    assert np.allclose(image.GetOrigin(), expected.GetOrigin()) and np.allclose(image.GetSpacing(), expected.GetSpacing())
    assert np.allclose(image.GetDirection(), expected.GetDirection())


def test_dicom_zip_predicts_like_nnseg_predict(server: dict, dicom_case: dict) -> None:
    url, name, upload = server["url"], server["name"], {"file": ("study.ZIP", dicom_case["zip"])}
    with httpx.Client(base_url=url, headers=AUTH, timeout=300) as client:
        r = client.post(f"/v1/models/{name}/predict", files=upload)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/gzip"
        _same_labels(r.content, dicom_case["ref"])
        assert (sitk.GetArrayFromImage(_seg(r.content)) > 0).sum() > 100
        # as a job, answered in NRRD
        job = client.post(f"/v1/models/{name}/jobs", params={"result_format": "nrrd"}, files=upload).json()
        for _ in range(600):
            status = client.get(f"/v1/jobs/{job['id']}").json()
            if status["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        assert status["status"] == "done", status
        _same_labels(client.get(f"/v1/jobs/{job['id']}/result").content, dicom_case["ref"], ".nrrd")
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
        # MONAI Label's upload (3D Slicer sends the file with the infer request)
        r = client.post(f"/infer/{name}", params={"output": "image"}, files=upload, data={"params": "{}"})
        assert r.status_code == 200, r.text
        _same_labels(r.content, dicom_case["ref"])
    assert _files_under(server["tmp"]) == []


def test_dicom_seg_result_reads_back_with_the_same_labels(server: dict, dicom_case: dict) -> None:
    import highdicom as hd
    import pydicom

    r = httpx.post(f"{server['url']}/v1/models/{server['name']}/predict", params={"result_format": "dicom-seg"},
                   files={"file": ("series.zip", dicom_case["zip"])}, headers=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(r.content))
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_case["files"]]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                               combine_segments=True)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(sitk.ReadImage(str(dicom_case["ref"]))))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert _files_under(server["tmp"]) == []


def _bad_zips(root: Path, dicom_case: dict) -> list[tuple[str, bytes, int, str]]:
    """(what, zip bytes, status, part of the message) for each refusal."""
    array, geometry = dicom_case["array"], dicom_case["geometry"]
    second = write_series(array[:4], root / "two" / "b", **geometry)
    write_series(array[:4], root / "two" / "a", **geometry)
    broken = write_series(array[:6], root / "broken" / "s", **geometry)
    broken[3].unlink()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(20 << 20))
    return [
        ("two series", _zip(root / "two"), 422, "holds 2 DICOM image series"),
        ("no series", _zip(root / "none", extra={"notes.txt": b"no dicom here"}), 422, "holds 0 DICOM image series"),
        ("missing slice", _zip(root / "broken"), 422, "misses 1 slice(s)"),
        ("zip slip", _zip(second[0].parent, extra={"../../evil.dcm": b"x"}), 400, "unsafe entry name"),
        ("absolute", _zip(second[0].parent, extra={"/etc/evil.dcm": b"x"}), 400, "unsafe entry name"),
        ("nested zip", _zip(second[0].parent, extra={"inner.zip": b"PK"}), 400, "holds another zip"),
        ("not a zip", b"this is not a zip", 400, "not a zip archive"),
        ("zip bomb", bomb.getvalue(), 413, "unpacks to 20.0 MiB"),
    ]


def test_bad_zips_are_refused_with_json_naming_the_problem(server: dict, dicom_case: dict, tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with httpx.Client(base_url=server["url"], headers=AUTH, timeout=120) as client:
        for what, data, status, text in _bad_zips(tmp_path, dicom_case):
            for endpoint in ("predict", "jobs"):
                r = client.post(f"/v1/models/{server['name']}/{endpoint}", files={"file": ("case.zip", data)})
                assert r.status_code == status, (what, endpoint, r.text)
                detail = r.json()["detail"]
                assert text in detail, (what, detail)
                print(what, endpoint, r.status_code, detail)
                assert str(server["tmp"]) not in detail and str(tmp_path) not in detail, (what, detail)
        r = client.post(f"/v1/models/{server['name']}/predict", params={"result_format": "dicom-seg"},
                        files={"file": (f"{CASE}.nii.gz", b"x")})
        assert r.status_code == 400 and "dicom-seg" in r.json()["detail"]
        r = client.post(f"/v1/models/{server['name']}/predict", params={"result_format": "png"},
                        files={"file": ("case.zip", dicom_case["zip"])})
        assert r.status_code == 400 and "'png'" in r.json()["detail"]
    assert _files_under(server["tmp"]) == []


def test_missing_pydicom_is_a_501_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import nnseg.serve.automatic.dicom_upload as dicom_upload
    from nnseg.serve.automatic.models import CaseError

    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` raises ImportError
    with pytest.raises(CaseError, match=r"pip install nnseg\[dicom\]") as caught:
        dicom_upload.check_dicom_request(object(), files=1, seg=False)  # type: ignore[arg-type]
    assert caught.value.status == 501
