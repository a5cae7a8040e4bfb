"""Issue 24, cluster and ONNX side: ``--cluster`` goes through the output folder's checks and lock (defect 4); a
failing case fails alone, is named in one line at the end, is not retried when its input is bad, and every good case
is written (defect 5, prediction and preprocessing); a scheduler that accepts the connection but never speaks ends
in a deadline (defect 10); a damaged ONNX file is one line naming the file and the export command (defect 16).

Against real schedulers on 127.0.0.1: a ``dask scheduler`` with two ``dask worker`` processes started here, and
``--cluster local:2``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dask_cluster import DaskProcesses
from shared_paths import EXPECTED
from test_reliability_predict import _image, _model

from nnseg.cli.main import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GOOD = [f"case_{i}" for i in range(5)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    processes = DaskProcesses(tmp_path_factory.mktemp("dask"), env)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not EXPECTED.is_dir():
        pytest.skip(f"golden files not found at {EXPECTED} (set NNSEG_SHARED)")
    return _model(tmp_path_factory.mktemp("model") / "results", EXPECTED)


def _inputs(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in GOOD:
        _image(folder / f"{name}_0000.nii.gz", rng.random((20, 24, 20)))
    return folder


def _truncate(path: Path, source: Path) -> None:
    path.write_bytes(source.read_bytes()[:300])


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "NNSEG_DEBUG": "", **extra}


def _predict(model: Path, images: Path, out: Path, *extra: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nnseg.cli.main", "predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m",
           str(model), "-f", "0", "-device", "cpu", "--disable_tta", "--precision", "fp32", "--disable_progress_bar",
           *extra]
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout, check=False)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# defect 4: the output checks -------------------------------------------------------------------------------------

def test_cluster_refuses_output_folder_equal_to_input(model: Path, tmp_path: Path) -> None:
    images = _inputs(tmp_path / "in")
    before = _snapshot(images)
    proc = _predict(model, images, images, "--cluster", "local:2", timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    [line] = _error_lines(proc.stderr)
    assert f"the output folder {images} holds the input image" in line and "choose another output folder" in line
    assert "Dask cluster" not in proc.stderr  # refused before any worker was started
    assert _snapshot(images) == before  # no prediction, dataset.json, plans.json or lock among the images
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_cluster_refuses_an_output_path_that_is_a_file(model: Path, tmp_path: Path, capsys) -> None:
    images, out = _inputs(tmp_path / "in"), tmp_path / "out.nii.gz"
    out.write_text("not a folder")
    capsys.readouterr()
    assert main(["predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0",
                 "-device", "cpu", "--disable_tta", "--disable_progress_bar", "--cluster", "local:2"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"nnseg predict-from-modelfolder: error: {out}: File exists") and "Dask" not in line
    assert out.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["in", "out.nii.gz"]


def test_cluster_refuses_an_output_folder_locked_by_another_run(model: Path, cluster: DaskProcesses,
                                                                tmp_path: Path) -> None:
    from nnseg.locks import LOCK_NAME, folder_lock

    images, out = _inputs(tmp_path / "in"), tmp_path / "out"
    with folder_lock(out, purpose="nnUNetv2_predict -o out (another run)"):  # held by this live process
        proc = _predict(model, images, out, "--cluster", cluster.address, timeout=120)
        assert sorted(os.listdir(out)) == [LOCK_NAME]  # nothing written beside the other run's lock
    assert proc.returncode == 1, proc.stderr[-3000:]
    [line] = _error_lines(proc.stderr)
    assert str(out / LOCK_NAME) in line and "(another run)" in line
    assert "Dask cluster" not in proc.stderr
    assert os.listdir(out) == []


def test_cluster_num_parts_share_an_output_folder_with_a_lock_each(model: Path, cluster: DaskProcesses,
                                                                   tmp_path: Path) -> None:
    """The lock rule of the single-machine command: ``-num_parts`` runs may write into one folder at once."""
    images, out = _inputs(tmp_path / "in"), tmp_path / "out"
    from nnseg.locks import folder_lock

    with folder_lock(out, purpose="part 0", name=".nnseg.part0of2.lock"):
        proc = subprocess.run([sys.executable, "-m", "nnseg.cli.main", "predict", "-i", str(images), "-o", str(out),
                               "-d", "777", "-c", "3d_tiny", "-tr", "nnUNetTrainer_5epochs", "-f", "0", "-device",
                               "cpu", "--disable_tta", "--disable_progress_bar", "-num_parts", "2", "-part_id", "1",
                               "--cluster", cluster.address], env=_env(nnUNet_results=str(model.parents[1])),
                              capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_1.nii.gz", "case_3.nii.gz"]
    assert not [p for p in out.glob(".*")]


# defect 5: one bad case fails alone ------------------------------------------------------------------------------

def test_bad_cases_fail_alone_and_every_good_case_is_written(model: Path, cluster: DaskProcesses,
                                                             tmp_path: Path) -> None:
    """Five good cases, a truncated ``.nii.gz`` and a one-slice image that the input checks refuse for this 3D model,
    on a scheduler with two workers."""
    images, out, plain = _inputs(tmp_path / "in"), tmp_path / "out", tmp_path / "plain"
    assert main(["predict-from-modelfolder", "-i", str(images), "-o", str(plain), "-m", str(model), "-f", "0",
                 "-device", "cpu", "--disable_tta", "--precision", "fp32", "--disable_progress_bar"]) == 0
    _truncate(images / "case_2b_0000.nii.gz", images / "case_2_0000.nii.gz")
    _image(images / "case_flat_0000.nii.gz", np.ones((1, 24, 20)))
    inputs_before = _snapshot(images)
    logs_before = [len(cluster.log(i)) for i in (0, 1)]

    proc = _predict(model, images, out, "--cluster", cluster.address)
    assert proc.returncode == 1, proc.stderr[-3000:]
    [line] = _error_lines(proc.stderr)  # one line at the end names both
    assert proc.stderr.strip().splitlines()[-1] == line
    assert "2 of 7 case(s) failed, the other 5 finished." in line
    assert "case_2b: SimpleITKIO cannot read" in line and "case_2b_0000.nii.gz" in line
    assert "case_flat: " in line and "is a 2D image" in line
    assert ("The other cases are written; fix or remove the failed inputs, then rerun with --continue_prediction "
            "(written cases are skipped)") in line
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in GOOD]
    for case in GOOD:
        np.testing.assert_array_equal(_labels(out / f"{case}.nii.gz"), _labels(plain / f"{case}.nii.gz"))
    assert not [p for p in out.rglob(".*")], "temporary files or a lock left behind"
    assert _snapshot(images) == inputs_before and sorted(os.listdir(tmp_path)) == ["in", "out", "plain"]
    new_logs = "".join(cluster.log(i)[start:] for i, start in zip((0, 1), logs_before))
    assert "case_2b" not in new_logs and "case_flat" not in new_logs  # no "Compute Failed": not retried

    written = _snapshot(out)
    proc = _predict(model, images, out, "--cluster", cluster.address, "--continue_prediction")
    assert proc.returncode == 1 and "2 of 2 case(s) failed, the other 0 finished." in proc.stderr
    assert {k: v for k, v in _snapshot(out).items() if k.endswith(".nii.gz")} == \
        {k: v for k, v in written.items() if k.endswith(".nii.gz")}  # the good cases were not predicted again

    _image(images / "case_2b_0000.nii.gz", np.random.default_rng(1).random((20, 24, 20)))  # the user fixes one...
    (images / "case_flat_0000.nii.gz").unlink()  # ...and removes the other
    proc = _predict(model, images, out, "--cluster", cluster.address, "--continue_prediction")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicted 1 case(s)" in proc.stderr and "5 already done" in proc.stderr
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted([f"{c}.nii.gz" for c in [*GOOD, "case_2b"]])
    assert not [p for p in out.rglob(".*")]


def test_a_truncated_case_fails_alone_on_a_local_cluster(model: Path, tmp_path: Path) -> None:
    """The reported case: ``--cluster local:2`` with good cases and one truncated ``.nii.gz``."""
    images, out = _inputs(tmp_path / "in"), tmp_path / "out"
    _truncate(images / "case_2b_0000.nii.gz", images / "case_2_0000.nii.gz")
    proc = _predict(model, images, out, "--cluster", "local:2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    [line] = _error_lines(proc.stderr)
    assert "1 of 6 case(s) failed, the other 5 finished. case_2b: SimpleITKIO cannot read" in line
    assert "Compute Failed" not in proc.stderr  # not retried
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in GOOD]
    assert not [p for p in out.rglob(".*")]


def test_input_errors_are_not_retried_other_errors_are(cluster: DaskProcesses, tmp_path: Path) -> None:
    """The retry rule itself: a ValueError (a bad input) runs once; another error is retried, and fails alone after
    the retries; the good tasks' results all arrive."""
    import distributed

    from nnseg.cluster.tasks import TasksFailed, run_tasks

    def task(job: str) -> str:  # pickled by value: the workers need no test module
        record = Path(folder, job)
        with record.open("a") as f:
            f.write("x")
        tries = len(record.read_text())
        if job == "bad":
            raise ValueError(f"{job}: the image is unreadable")
        if job == "broken" or (job == "flaky" and tries == 1):
            raise RuntimeError(f"{job}: out of memory")
        return job.upper()

    folder = str(tmp_path)
    jobs = ["a", "bad", "b", "flaky", "broken", "c"]
    results: dict[int, str] = {}
    with distributed.Client(cluster.address, timeout=30) as client:
        with pytest.raises(TasksFailed) as failure:
            for i, result in run_tasks(client, task, jobs, names=jobs, resources=[None] * len(jobs), retries=2,
                                       what="case", progress=False):
                results[i] = result
    assert results == {0: "A", 2: "B", 3: "FLAKY", 5: "C"}
    message = str(failure.value)
    assert "\n" not in message and message.startswith("2 of 6 case(s) failed, the other 4 finished.")
    assert "bad: bad: the image is unreadable" in message and "broken: broken: out of memory" in message
    assert set(failure.value.failed) == {"bad", "broken"}
    tries = {job: len((tmp_path / job).read_text()) for job in jobs}
    assert tries == {"a": 1, "bad": 1, "b": 1, "flaky": 2, "broken": 3, "c": 1}


def test_preprocessing_one_bad_case_fails_alone(cluster: DaskProcesses, tmp_path: Path) -> None:
    """The same rule for ``nnseg preprocess --cluster``: the good cases are preprocessed, a rerun skips them."""
    from nnseg.raw.demo_data import make_demo_dataset

    raw = tmp_path / "raw" / "Dataset991_Train"
    make_demo_dataset(raw, num_cases=5, num_test=0, shape=(12, 16, 16), lesion=False)
    env = _env(nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    assert main(["plan-and-preprocess", "-d", "991", "-c", "3d_fullres", "--no_pbar", "-np", "1", "--no_pp"],
                env=env) == 0
    bad = raw / "imagesTr" / "case_001_0000.nii.gz"
    _truncate(bad, bad)
    cmd = [sys.executable, "-m", "nnseg.cli.main", "preprocess", "-d", "991", "-c", "3d_fullres", "--cluster",
           cluster.address]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    [line] = _error_lines(proc.stderr)
    assert "1 of 5 case(s) failed, the other 4 finished. case_001:" in line and str(bad) in line
    data = tmp_path / "pre" / "Dataset991_Train" / "nnUNetPlans_3d_fullres"
    assert sorted(p.name for p in data.glob("case_*.json")) == [f"case_00{i}.json" for i in (0, 2, 3, 4)]
    assert not [p for p in data.rglob(".*")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "1 of 1 case(s) failed" in proc.stderr  # the 4 good cases were skipped


# defect 10: a scheduler that accepts and never speaks ------------------------------------------------------------

def _server(answer: bytes) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections, sends ``answer`` and then nothing more."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
                held[-1].sendall(answer)
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    yield from _server(b"")


@pytest.fixture
def http_server() -> Iterator[int]:
    yield from _server(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello" * 4)


def _predict_here(model: Path, images: Path, out: Path, cluster: str,
                  capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The command in this process, with Dask's connect deadline at 4 s; returns the exit code and stderr. It runs
    in a thread given 60 s, so a regression (a hang) fails the test instead of stopping the suite."""
    import dask
    import distributed  # noqa: F401 - loads Dask's defaults first, so the setting below only changes the one value

    capsys.readouterr()
    codes: list[int] = []

    def run() -> None:
        with dask.config.set({"distributed.comm.timeouts.connect": "4s"}):
            codes.append(main(["predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f",
                               "0", "-device", "cpu", "--disable_tta", "--disable_progress_bar", "--cluster", cluster]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert codes, "the command still waits for the scheduler after 60 s"
    return codes[0], capsys.readouterr().err


@pytest.mark.parametrize("form", ["address", "scheduler-file"])
def test_a_scheduler_that_never_speaks_ends_in_a_deadline(model: Path, silent_server: int, tmp_path: Path, capsys,
                                                          form: str) -> None:
    import json

    address = f"tcp://127.0.0.1:{silent_server}"
    target = address
    if form == "scheduler-file":
        target = str(tmp_path / "scheduler.json")
        Path(target).write_text(json.dumps({"type": "Scheduler", "address": address}))
    images, out = _inputs(tmp_path / "in"), tmp_path / "out"
    start = time.monotonic()
    code, err = _predict_here(model, images, out, target, capsys)
    assert code == 1, err[-3000:]
    assert time.monotonic() - start < 30  # the deadline, plus loading the model
    [line] = err.strip().splitlines()
    assert f"the Dask scheduler {target!r} did not answer within 4 s" in line
    assert "distributed.comm.timeouts.connect" in line
    assert not out.exists() or os.listdir(out) == []  # no run files, no lock left
    assert set(os.listdir(tmp_path)) <= {"in", "out", "scheduler.json"} and len(os.listdir(images)) == len(GOOD)


def test_a_server_that_is_not_a_scheduler_is_named(model: Path, http_server: int, tmp_path: Path, capsys) -> None:
    target = f"tcp://127.0.0.1:{http_server}"
    images, out = _inputs(tmp_path / "in"), tmp_path / "out"
    code, err = _predict_here(model, images, out, target, capsys)
    assert code == 1, err[-3000:]
    [line] = err.strip().splitlines()
    assert f"{target!r} did not answer as a Dask scheduler" in line
    assert not out.exists() or os.listdir(out) == []
    assert set(os.listdir(tmp_path)) <= {"in", "out"} and len(os.listdir(images)) == len(GOOD)


# defect 16: a damaged ONNX file ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_export(model: Path) -> bytes:
    """The tiny model's exported ONNX file (removed again: each test writes the damaged file it needs)."""
    path = model / "fold_0" / "checkpoint_final.onnx"
    assert main(["export-onnx", "-m", str(model), "-f", "0"]) == 0
    whole = path.read_bytes()
    path.unlink()
    return whole


def _another_graph() -> bytes:
    """A valid ONNX model that is not an nnseg export (an Identity of ``x``)."""
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "another-graph"])
def test_damaged_onnx_file_is_one_line_naming_it_and_the_export(model: Path, onnx_export: bytes, tmp_path: Path,
                                                                capsys, damage: str) -> None:
    path = model / "fold_0" / "checkpoint_final.onnx"
    path.write_bytes({"truncated": onnx_export[: len(onnx_export) // 2], "garbage": os.urandom(4096), "empty": b"",
                      "another-graph": _another_graph()}[damage])
    images, out = _inputs(tmp_path / "in"), tmp_path / "out"
    capsys.readouterr()
    try:
        code = main(["predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0",
                     "-device", "cpu", "--disable_tta", "--disable_progress_bar", "--backend", "onnxruntime"])
    finally:
        path.unlink()
    err = capsys.readouterr().err
    assert code == 1
    [line] = err.strip().splitlines()
    assert str(path) in line and f"re-export it: nnseg export-onnx -m {model} -f 0 -chk checkpoint_final.pth" in line
    assert "Traceback" not in err and not out.exists() and os.listdir(tmp_path) == ["in"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint_final.pth"]  # nothing beside the model
