"""The pieces of ``nnseg serve`` that need no server: token and binding rules, upload names, model names, the MONAI
Label answer's multipart body (parsed as MONAI Label's client parses it), and the job queue's bound and clean-up."""

from __future__ import annotations

import email.parser
import threading
import time
from pathlib import Path

import pytest

from nnseg.serve.auth import authorized, check_binding, is_loopback, resolve_token
from nnseg.serve.automatic.jobs import CANCELLED, DONE, JobQueue, QueueFull
from nnseg.serve.automatic.models import CaseError, model_name
from nnseg.serve.monai_label import multipart_body
from nnseg.serve.automatic.uploads import ImageStore, upload_ending

TOKEN = "0123456789abcdef0123"


def test_token_and_binding_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.9.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 without authentication"):
        check_binding("0.0.0.0", None)
    assert resolve_token(None, {"NNSEG_SERVE_TOKEN": TOKEN}) == TOKEN and resolve_token(None, {}) is None
    with pytest.raises(ValueError, match="at least 16"):
        resolve_token("short", {})
    assert authorized(f"Bearer {TOKEN}", TOKEN) and authorized(f"bearer {TOKEN}", TOKEN)  # Slicer sends 'bearer'
    assert not authorized(None, TOKEN) and not authorized(TOKEN, TOKEN) and not authorized("Bearer x", TOKEN)
    assert authorized(None, None)


def test_upload_names_are_only_endings() -> None:
    assert upload_ending("Case 1.NII.GZ") == ".nii.gz" and upload_ending("a.nrrd") == ".nrrd"
    for bad in ("../../etc/passwd", "x.nii", "x.dcm", None, ""):
        with pytest.raises(CaseError, match="is not one of"):
            upload_ending(bad)


def test_model_names(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset004_Hippocampus" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert model_name(folder) == ("Dataset004_Hippocampus_3d_fullres", folder)
    assert model_name(f"hippo={folder}") == ("hippo", folder)
    with pytest.raises(ValueError, match="NAME=FOLDER"):
        model_name(f"bad name/x={folder}")


def test_monai_label_multipart_answer_parses_like_its_client() -> None:
    body, content_type = multipart_body({"label_names": {"a": 1}}, b"\x00\x01label", "m_1234.nrrd")
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
    assert parts["params"].get_payload() == '{"label_names": {"a": 1}}'
    assert parts["image"].get_filename() == "m_1234.nrrd" and parts["image"].get_payload(decode=True) == b"\x00\x01label"


class _SlowModel:
    """Stands in for a ServedModel: predict_case is patched to wait for a release or the job's cancellation."""


def test_queue_bound_cancel_and_clean_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def fake_predict(model, inputs, output, *, progress, cancelled):  # noqa: ANN001, ANN202
        from nnseg.serve.automatic.models import JobCancelled

        progress(0.5)
        while not release.wait(0.01):
            if cancelled.is_set():
                raise JobCancelled()
        output.write_bytes(b"seg")

    monkeypatch.setattr("nnseg.serve.automatic.jobs.predict_case", fake_predict)
    queue = JobQueue([{"m": _SlowModel()}], work_dir=tmp_path / "jobs", max_queued=2, result_ttl_s=0.2)
    jobs = []
    for _ in range(3):
        job = queue.new_job("m", [".nii.gz"], ".nii.gz")
        job.inputs[0].write_bytes(b"img")
        queue.submit(job)
        jobs.append(job)
        time.sleep(0.05)  # the first one starts running
    with pytest.raises(QueueFull, match="retry later"):
        queue.new_job("m", [".nii.gz"], ".nii.gz")
    assert queue.cancel(jobs[2].id).status == CANCELLED and not jobs[2].inputs[0].exists()
    release.set()
    for job in jobs[:2]:
        while job.status != DONE:
            time.sleep(0.01)
        assert job.result.read_bytes() == b"seg" and not job.inputs[0].exists()
    time.sleep(0.3)
    queue.sweep()  # ended more than result_ttl_s ago: removed with their files
    for _ in range(500):  # the sweeper thread may be deleting one of them right now (a busy machine)
        if not list((tmp_path / "jobs").iterdir()):
            break
        time.sleep(0.01)
    assert list((tmp_path / "jobs").iterdir()) == []
    with pytest.raises(KeyError):
        queue.get(jobs[0].id)
    queue.shutdown()


def test_host_and_origin_rules() -> None:
    from nnseg.serve.auth import LOOPBACK_NAMES, RequestGuard, host_name, refusal

    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:80") == "localhost" and host_name("::1") == "::1"
    guard = RequestGuard(hosts={*LOOPBACK_NAMES, "scanner.lan"}, origins={"https://viewer.example"})
    ok = {b"host": b"127.0.0.1:8000"}
    assert refusal("POST", ok, guard) is None and refusal("GET", {b"host": b"127.3.4.5"}, guard) is None
    assert refusal("POST", {b"host": b"scanner.lan:8000"}, guard) is None
    assert "DNS rebinding" in refusal("GET", {b"host": b"evil.example:8000"}, guard)
    assert refusal("POST", {**ok, b"origin": b"http://127.0.0.1:8000"}, guard) is None  # same origin
    assert refusal("POST", {**ok, b"origin": b"https://viewer.example"}, guard) is None  # --allowed_origin
    for headers in ({b"origin": b"http://attacker.example"}, {b"origin": b"null"}, {b"sec-fetch-site": b"cross-site"},
                    {b"origin": b"http://127.0.0.1:9000"}):
        assert "refused" in refusal("DELETE", {**ok, **headers}, guard)
        assert refusal("GET", {**ok, **headers}, guard) is None  # reads are not state changes (and get no CORS)
    anyone = RequestGuard(hosts=None)  # a server with a token: any Host
    assert refusal("GET", {b"host": b"server.example"}, anyone) is None


def test_unzip_budget_is_shared(tmp_path: Path) -> None:
    from nnseg.serve.automatic.dicom_upload import UnzipBudget

    budget = UnzipBudget(100, tmp_path)
    assert budget.reserve(60) == 60
    with pytest.raises(CaseError, match="retry later") as busy:
        budget.reserve(50)
    assert busy.value.status == 429
    with pytest.raises(CaseError, match="more than this server unpacks at once") as big:
        budget.reserve(101)
    assert big.value.status == 413
    budget.release(60)
    assert budget.reserve(100) == 100


def test_stale_work_folders_of_dead_servers_are_removed(tmp_path: Path) -> None:
    import json
    import os
    import socket
    import subprocess
    import sys

    from nnseg.locks import LOCK_NAME
    from nnseg.serve.server import remove_stale_work_dirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    records = {"nnseg-serve-dead": int(dead.stdout), "nnseg-serve-alive": os.getpid()}
    for name, pid in records.items():
        (tmp_path / name / "jobs").mkdir(parents=True)
        (tmp_path / name / "jobs" / "input_0000.nii.gz").write_bytes(b"x")
        (tmp_path / name / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    (tmp_path / "nnseg-serve-nolock").mkdir()
    (tmp_path / "other-dead").mkdir()
    assert remove_stale_work_dirs(tmp_path) == [tmp_path / "nnseg-serve-dead"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nnseg-serve-alive", "nnseg-serve-nolock", "other-dead"]
