"""``nnseg serve`` end to end: the real server (uvicorn, subprocess, 127.0.0.1, free port) and real HTTP clients.

nnU-Net's golden Hippocampus model (fold 0, fp32, no TTA) is served with a token and a 1 MiB upload limit. Checked:
the model list, a case predicted equal to ``nnseg predict``, job progress / cancel / 429, auth, 413, 404, 400/422,
MONAI Label's own Python client (3D Slicer's calls: login, info, upload, infer by id; and infer with the file), a small
concurrent load, and that no temporary file is left, during serving and after shutdown.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from golden_model import IMAGES, install_golden_model

from nnseg.cli.main import main
from nnseg.locks import LOCK_NAME

pytestmark = [pytest.mark.golden, pytest.mark.slow]
NAME = "Dataset004_Hippocampus_3d_fullres_bs2"
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CASES = ("hippocampus_020", "hippocampus_037", "hippocampus_038")


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "nnseg.cli.main", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("nnseg serve: http://"):
                found.put(line.split()[2].rstrip("/"))

    threading.Thread(target=drain, daemon=True).start()
    try:
        url = found.get(timeout=180)
    except queue.Empty:
        proc.kill()
        pytest.fail("the server did not start:\n" + "".join(lines))
    for _ in range(100):
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url, lines
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("the server does not answer:\n" + "".join(lines))


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    model = install_golden_model(root / "results")
    (root / "in").mkdir()
    for case in CASES:
        (root / "in" / f"{case}_0000.nii.gz").symlink_to(IMAGES / f"{case}.nii.gz")
    assert main(["predict-from-modelfolder", "-i", str(root / "in"), "-o", str(root / "ref"), "-m", str(model), "-f", "0",
                 "-device", "cpu", "--precision", "fp32", "--disable_tta", "--disable_progress_bar"]) == 0
    return {"root": root, "model": model, "images": IMAGES, "ref": root / "ref"}


@pytest.fixture(scope="module")
def server(golden: dict[str, Path]) -> dict[str, object]:
    tmp = golden["root"] / "server_tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "NNSEG_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "2"}
    proc, url, lines = _start(["--models", str(golden["model"]), "--port", "0", "-f", "0", "-device", "cpu",
                               "--precision", "fp32", "--disable_tta", "--max_upload_mb", "1", "--max_queued", "4",
                               "--log_level", "warning"], env)
    yield {"url": url, "proc": proc, "tmp": tmp, "lines": lines}
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]


def _files_under(folder: Path, *, but_uploads: bool = False) -> list[Path]:
    """Files under ``folder`` (``but_uploads``: images kept by ``PUT /datastore/`` for Slicer left out; the running
    server's lock, which marks its folder as in use, is no upload)."""
    return [p for p in folder.rglob("*") if not p.is_dir() and not (but_uploads and p.parent.name == "uploads")
            and p.name != LOCK_NAME]


def _seg(data: bytes, ending: str = ".nii.gz") -> sitk.Image:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nnseg_test_{os.getpid()}_{threading.get_ident()}{ending}"
    try:
        path.write_bytes(data)
        return sitk.ReadImage(str(path))
    finally:
        path.unlink(missing_ok=True)


def _assert_same(image: sitk.Image, ref_file: Path) -> None:
    ref = sitk.ReadImage(str(ref_file))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ref))
    assert image.GetSpacing() == ref.GetSpacing() and image.GetOrigin() == ref.GetOrigin()
    assert image.GetDirection() == ref.GetDirection()


def _upload(golden: dict[str, Path], case: str) -> dict[str, tuple[str, bytes]]:
    return {"file": (f"{case}.nii.gz", (golden["images"] / f"{case}.nii.gz").read_bytes())}


def test_list_and_predict_equals_nnseg_predict(server: dict, golden: dict[str, Path]) -> None:
    url = server["url"]
    listed = httpx.get(f"{url}/v1/models", headers=AUTH).json()
    [model] = listed["models"]
    assert model["name"] == NAME and model["labels"] == {"Anterior": 1, "Posterior": 2}
    assert model["channels"] == {"0": "MRI"} and model["folds"] == ["0"] and model["devices"] == ["cpu"]
    r = httpx.post(f"{url}/v1/models/{NAME}/predict", files=_upload(golden, CASES[0]), headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    _assert_same(_seg(r.content), golden["ref"] / f"{CASES[0]}.nii.gz")
    r = httpx.post(f"{url}/v1/models/{NAME}/predict", params={"result_format": ".nrrd"},
                   files=_upload(golden, CASES[1]), headers=AUTH, timeout=120)
    assert r.status_code == 200 and 'filename="' in r.headers["content-disposition"]
    _assert_same(_seg(r.content, ".nrrd"), golden["ref"] / f"{CASES[1]}.nii.gz")
    assert _files_under(server["tmp"]) == []


def test_errors_are_json_with_the_right_status(server: dict, golden: dict[str, Path]) -> None:
    url, predict = server["url"], f"{server['url']}/v1/models/{NAME}/predict"
    assert httpx.get(f"{url}/health").status_code == 200  # liveness needs no token
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        r = httpx.post(predict, files=_upload(golden, CASES[0]), headers=headers)
        assert r.status_code == 401 and "bearer token" in r.json()["detail"]
    assert httpx.get(f"{url}/info/", headers={}).status_code == 401
    r = httpx.post(f"{url}/v1/models/nope/predict", files=_upload(golden, CASES[0]), headers=AUTH)
    assert r.status_code == 404 and NAME in r.json()["detail"]
    assert httpx.get(f"{url}/v1/jobs/0123abc", headers=AUTH).status_code == 404
    r = httpx.post(predict, files={"file": ("big.nii.gz", os.urandom(2 * 2**20))}, headers=AUTH)
    assert r.status_code == 413 and "--max_upload_mb" in r.json()["detail"]
    head = b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.nii.gz"\r\n\r\n'
    chunks = (head if i == 0 else b"x" * 2**16 for i in range(40))  # chunked: no Content-Length, counted as read
    r = httpx.post(predict, content=chunks, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=abc"})
    assert r.status_code == 413
    r = httpx.post(predict, files={"file": ("case.nii.gz", b"not an image")}, headers=AUTH, timeout=60)
    assert r.status_code == 400 and "could not be read" in r.json()["detail"] and "server_tmp" not in r.text
    r = httpx.post(predict, files={"file": ("../../etc/passwd", b"x")}, headers=AUTH)
    assert r.status_code == 400 and ".nii.gz" in r.json()["detail"]
    two = [("file", (f"c{i}.nii.gz", (golden["images"] / f"{CASES[0]}.nii.gz").read_bytes())) for i in range(2)]
    r = httpx.post(predict, files=two, headers=AUTH)
    assert r.status_code == 422 and "1 channel" in r.json()["detail"]
    assert _files_under(server["tmp"]) == []


def _big_case(path: Path) -> None:
    """A 160^3 volume (245 tiles, 31 network calls: the job runs long enough to watch) compressing to a few KiB."""
    volume = np.zeros((160, 160, 160), dtype=np.int16)
    volume[40:120, 40:120, 40:120] = 100
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path), useCompression=True)


def test_job_progress_cancel_and_full_queue(server: dict, golden: dict[str, Path]) -> None:
    url = server["url"]
    big = golden["root"] / "big.nii.gz"
    _big_case(big)
    upload = {"file": ("big.nii.gz", big.read_bytes())}
    r = httpx.post(f"{url}/v1/models/{NAME}/jobs", files=upload, headers=AUTH)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    for _ in range(600):
        status = httpx.get(f"{url}/v1/jobs/{job}", headers=AUTH).json()
        if status["status"] == "running" and status["progress"] > 0.05:
            break
        time.sleep(0.1)
    assert status["status"] == "running" and 0.05 < status["progress"] < 1, status
    assert httpx.get(f"{url}/v1/jobs/{job}/result", headers=AUTH).status_code == 409  # not done yet
    waiting = [httpx.post(f"{url}/v1/models/{NAME}/jobs", files=upload, headers=AUTH) for _ in range(5)]
    assert [w.status_code for w in waiting] == [202] * 4 + [429]  # --max_queued 4 waiting, one running
    assert waiting[-1].headers["retry-after"] and "retry later" in waiting[-1].json()["detail"]
    for w in waiting[:4]:
        assert httpx.post(f"{url}/v1/jobs/{w.json()['id']}/cancel", headers=AUTH).json()["status"] == "cancelled"
    assert httpx.post(f"{url}/v1/jobs/{job}/cancel", headers=AUTH).status_code == 200
    for _ in range(300):
        status = httpx.get(f"{url}/v1/jobs/{job}", headers=AUTH).json()
        if status["status"] == "cancelled":
            break
        time.sleep(0.1)
    assert status["status"] == "cancelled" and status["progress"] < 1
    for j in [job] + [w.json()["id"] for w in waiting[:4]]:
        assert httpx.delete(f"{url}/v1/jobs/{j}", headers=AUTH).json()["removed"] is True
    r = httpx.post(f"{url}/v1/models/{NAME}/jobs", files=_upload(golden, CASES[2]), headers=AUTH)
    done = r.json()["id"]
    for _ in range(600):
        if httpx.get(f"{url}/v1/jobs/{done}", headers=AUTH).json()["status"] == "done":
            break
        time.sleep(0.1)
    result = httpx.get(f"{url}/v1/jobs/{done}/result", headers=AUTH)
    _assert_same(_seg(result.content), golden["ref"] / f"{CASES[2]}.nii.gz")
    httpx.delete(f"{url}/v1/jobs/{done}", headers=AUTH)
    assert _files_under(server["tmp"]) == []


def _monai_client() -> type:
    try:
        with warnings.catch_warnings():  # monailabel's client imports the stdlib cgi module (deprecated in 3.11)
            warnings.simplefilter("ignore", DeprecationWarning)
            from monailabel.client import MONAILabelClient
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("monailabel is not installed (./dev.sh setup installs it with --no-deps)")
    return MONAILabelClient


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # MONAI Label's client never closes its connections
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_monai_label_client_infers_like_3d_slicer(server: dict, golden: dict[str, Path], tmp_path: Path) -> None:
    client = _monai_client()(server["url"], tmpdir=str(tmp_path), client_id="slicer")
    assert client.auth_enabled()
    client.update_auth(client.auth_token("slicer-user", TOKEN))  # Slicer's login dialog: the token as password
    assert client.auth_valid_token()
    info = client.info()
    assert info["models"][NAME]["type"] == "segmentation" and info["labels"] == ["Anterior", "Posterior"]
    assert info["models"][NAME]["labels"] == {"Anterior": 1, "Posterior": 2} and not info.get("config")
    image = str(golden["images"] / f"{CASES[0]}.nii.gz")
    assert client.upload_image(image, "volume-1")["image"] == "volume-1"  # Slicer uploads the shown volume ...
    result, params = client.infer(NAME, "volume-1", {"result_extension": ".nrrd", "result_dtype": "uint8"})
    assert result.endswith(".nrrd") and params["label_names"] == {"Anterior": 1, "Posterior": 2}
    _assert_same(sitk.ReadImage(result), golden["ref"] / f"{CASES[0]}.nii.gz")  # ... and infers by id
    result, _ = client.infer(NAME, "", {}, file=str(golden["images"] / f"{CASES[1]}.nii.gz"))
    _assert_same(sitk.ReadImage(result), golden["ref"] / f"{CASES[1]}.nii.gz")
    with pytest.raises(Exception, match="404"):
        client.infer("nope", "volume-1", {})
    [stored] = _files_under(server["tmp"])  # Slicer's upload is kept (until its TTL or shutdown), nothing else
    assert stored.parent.name == "uploads" and "volume" not in stored.name  # the client's id is not a file name
    gc.collect()  # the client's unclosed sockets are collected here, under this test's warning filters


def test_small_load_every_answer_right_nothing_left(server: dict, golden: dict[str, Path]) -> None:
    url = server["url"]
    uploads = {c: _upload(golden, c) for c in CASES}
    refs = {c: sitk.GetArrayFromImage(sitk.ReadImage(str(golden["ref"] / f"{c}.nii.gz"))) for c in CASES}

    def one(i: int) -> tuple[str, int, bytes]:
        case = CASES[i % len(CASES)]
        with httpx.Client(headers=AUTH, timeout=300) as http:
            for _ in range(100):  # 429 means: retry later
                r = http.post(f"{url}/v1/models/{NAME}/predict", files=uploads[case])
                if r.status_code != 429:
                    return case, r.status_code, r.content
                time.sleep(0.2)
        return case, 429, b""

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(16)))
    assert [status for _, status, _ in answers] == [200] * 16
    for case, _, content in answers:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(_seg(content)), refs[case])
    assert _files_under(server["tmp"], but_uploads=True) == []


def test_shutdown_removes_everything(server: dict) -> None:
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "".join(server["lines"])
    assert list(server["tmp"].iterdir()) == []
    assert "temporary files removed" in "".join(server["lines"])


def test_refuses_to_listen_beyond_loopback_without_token(golden: dict[str, Path], capsys) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NNSEG_SERVE_TOKEN"}
    assert main(["serve", "--models", str(golden["model"]), "--host", "0.0.0.0", "--port", "0"], env=env) == 1
    assert "refusing to serve on 0.0.0.0 without authentication" in capsys.readouterr().err
    assert main(["serve", "--models", str(golden["model"]), "--token", "short"], env=env) == 1
    assert "at least 16" in capsys.readouterr().err


def test_failed_start_prints_only_what_failed(golden: dict[str, Path], tmp_path: Path, capsys,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23.5: no -f (folds 0-4, only fold_0 trained) printed "stopped, temporary files removed" first."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "NNSEG_SERVE_TOKEN"}
    assert main(["serve", "--models", str(golden["model"]), "--port", "0", "-device", "cpu"], env=env) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnseg serve: error: ") and "fold_1" in lines[0], captured.err
    assert "stopped" not in captured.err + captured.out and "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []  # the work folder is removed all the same
