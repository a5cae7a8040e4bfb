"""Issue 15 acceptance: ``nnseg predict --dicomweb`` against a real Orthanc (with its DICOMweb plugin).

The test starts Orthanc itself on a free port with a generated configuration (temporary storage, DICOM port off,
HTTP basic authentication), uploads two CT series (STOW-RS), runs prediction as a subprocess, kills it with SIGKILL
right after the first SEG is stored, runs it again, and checks that the server holds exactly one SEG per series
whose pixels equal the local copy. Orthanc is killed and its folder removed at the end.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_synth import write_series
from golden_model import install_golden_model

from nnseg.cli.main import main

pytestmark = [pytest.mark.slow]
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AUTH = "Basic " + base64.b64encode(b"nnseg:secret").decode()


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing in CI (.ci/run installs orthanc and orthanc-dicomweb)")
    pytest.skip(f"{what} not installed (apt-get install orthanc orthanc-dicomweb)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    if binary is None:
        _missing("Orthanc")
    if not PLUGIN.is_file():
        _missing(f"the Orthanc DICOMweb plugin {PLUGIN}")
    folder = tmp_path / "orthanc"
    folder.mkdir()
    port = _free_port()
    config = {"Name": "nnseg-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
              "HttpPort": port, "DicomServerEnabled": False, "DicomPort": _free_port(), "RemoteAccessAllowed": False,
              "AuthenticationEnabled": True, "RegisteredUsers": {"nnseg": "secret"}, "Plugins": [str(PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpTimeout": 60}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (closed below, after the process ends)
    proc = subprocess.Popen([str(binary), str(folder / "orthanc.json")], cwd=folder, stdout=log, stderr=log)
    try:
        _wait_until_up(port, proc, folder / "orthanc.log")
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(folder)
        assert not folder.exists()


def _wait_until_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import requests

    for _ in range(300):
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/system", headers={"Authorization": AUTH}, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"Orthanc did not answer on port {port} within 30 s")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return install_golden_model(tmp_path / "results")


def _upload(url: str, tmp_path: Path) -> tuple[str, list[str]]:
    from dicomweb_client import DICOMwebClient
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from shared_paths import DATA

    study = generate_uid()
    series = []
    for n, case in enumerate(("hippocampus_020", "hippocampus_037")):
        image = sitk.ReadImage(str(DATA / "Task04_Hippocampus" / "imagesTr" / f"{case}.nii.gz"))
        files = write_series(sitk.GetArrayFromImage(image), tmp_path / "upload" / case, spacing=image.GetSpacing(),
                             origin=image.GetOrigin(), direction=image.GetDirection(), modality="CT", slope=0.125,
                             intercept=-1024, study_uid=study, series_number=n + 1)
        DICOMwebClient(url, headers={"Authorization": AUTH}).store_instances([dcmread(f) for f in files])
        series.append(str(dcmread(files[0]).SeriesInstanceUID))
    # a scout series (skipped: nothing to segment) and a series with a missing slice (refused, the others go on)
    scout = write_series(np.zeros((1, 16, 16)), tmp_path / "upload" / "scout", study_uid=study, series_number=8)
    broken = write_series(np.zeros((6, 16, 16)), tmp_path / "upload" / "broken", study_uid=study, series_number=9)
    broken[2].unlink()
    extra = [dcmread(f) for f in [*scout, *broken[:2], *broken[3:]]]
    extra[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    DICOMwebClient(url, headers={"Authorization": AUTH}).store_instances(extra)
    return study, series + [str(extra[1].SeriesInstanceUID)]


def _command(model: Path, url: str, study: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nnseg.cli.main", "predict-from-modelfolder", "-m", str(model), "-o", str(out),
            "-f", "0", "-device", "cpu", "--disable_tta", "--dicomweb", url, "--study", study, *extra]


def _segs_on_server(url: str, study: str) -> list[dict]:
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(url, headers={"Authorization": AUTH})
    return [s for s in client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"})]


def test_predict_dicomweb_resumes_after_kill_with_one_seg_per_series(orthanc: str, model: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    import highdicom as hd
    from dicomweb_client import DICOMwebClient

    study, (*series, broken) = _upload(orthanc, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert main(_command(model, orthanc, study, tmp_path / "out")[3:]) == 1  # no credentials
    denied = capsys.readouterr().err
    assert "HTTP 401" in denied and "--token or --header" in denied
    proc = subprocess.Popen(_command(model, orthanc, study, tmp_path / "out", "--header", f"Authorization: {AUTH}"),
                            env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "stored SEG" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    assert len(_segs_on_server(orthanc, study)) == 1
    rerun = subprocess.run(_command(model, orthanc, study, tmp_path / "out", "--header", f"Authorization: {AUTH}"),
                           env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    assert "already on the server, skipped" in rerun.stderr and "no image slices to segment, skipped" in rerun.stderr
    assert f"refused: series {broken} misses 1 slice(s)" in rerun.stderr and "1 refused" in rerun.stderr
    segs = _segs_on_server(orthanc, study)
    assert len(segs) == 2
    client = DICOMwebClient(orthanc, headers={"Authorization": AUTH})
    referenced = []
    for item in segs:
        (stored,) = client.retrieve_series(study, item["0020000E"]["Value"][0])
        seg = hd.seg.Segmentation.from_dataset(stored)
        source = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        referenced.append(source)
        local = hd.seg.segread(tmp_path / "out" / f"{source.replace('.', '_')}.dcm")
        uids = [uid for _, _, uid in local.get_source_image_uids()]
        a = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
        b = local.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
        assert np.array_equal(a, b) and a.max() == 2
    assert sorted(referenced) == sorted(series)


def test_predict_dicomweb_makes_a_valid_seg_for_a_series_without_slice_thickness(orthanc: str, model: Path,
                                                                                 tmp_path: Path) -> None:
    """Issue 23.13 over DICOMweb: the thickness is derived from the positions, missing Type 2 attributes are left
    empty; the SEG stored on Orthanc passes dciodvfy."""
    from dicom_synth import dciodvfy_errors
    from dicomweb_client import DICOMwebClient
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from shared_paths import DATA

    study = generate_uid()
    image = sitk.ReadImage(str(DATA / "Task04_Hippocampus" / "imagesTr" / "hippocampus_020.nii.gz"))
    files = write_series(sitk.GetArrayFromImage(image), tmp_path / "upload", spacing=image.GetSpacing(),
                         origin=image.GetOrigin(), direction=image.GetDirection(), modality="CT", study_uid=study)
    datasets = [dcmread(f) for f in files]
    for ds in datasets:
        del ds.SliceThickness, ds.PatientBirthDate, ds.AccessionNumber
    client = DICOMwebClient(orthanc, headers={"Authorization": AUTH})
    client.store_instances(datasets)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(_command(model, orthanc, study, tmp_path / "out", "--header", f"Authorization: {AUTH}"),
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"SliceThickness (0018,0050) is missing; the SEG uses {image.GetSpacing()[2]:.6g} mm" in run.stderr
    (item,) = _segs_on_server(orthanc, study)
    (stored,) = client.retrieve_series(study, item["0020000E"]["Value"][0])
    stored.save_as(tmp_path / "stored.dcm", enforce_file_format=True)
    measures = stored.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(image.GetSpacing()[2])
    assert dciodvfy_errors(tmp_path / "stored.dcm") == []
    name = f"{datasets[0].SeriesInstanceUID.replace('.', '_')}.dcm"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name]


@pytest.mark.filterwarnings("ignore:.*for VR UI")
def test_a_series_uid_on_the_server_that_is_a_path_names_no_file(orthanc: str, model: Path, tmp_path: Path) -> None:
    """Issue 24.1 with a real archive: Orthanc stores a series whose SeriesInstanceUID is a path; nnseg refuses the
    UID from the QIDO-RS answer in one line, retrieves nothing and writes nothing."""
    from dicomweb_client import DICOMwebClient
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    study, evil = generate_uid(), "/tmp/nnseg-evil/x"
    files = write_series(np.zeros((4, 16, 16)), tmp_path / "upload", study_uid=study, series_uid=evil)
    DICOMwebClient(orthanc, headers={"Authorization": AUTH}).store_instances([dcmread(f) for f in files])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(_command(model, orthanc, study, tmp_path / "out", "--header", f"Authorization: {AUTH}"),
                         env=env, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in run.stderr.splitlines() if ": error: " in ln]
    assert run.returncode == 1 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"{evil!r}, which is not a DICOM UID" in errors[0] and "QIDO-RS answer" in errors[0]
    assert not (tmp_path / "out").exists() and not Path("/tmp/nnseg-evil").exists()
