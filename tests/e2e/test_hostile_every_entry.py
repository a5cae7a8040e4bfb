"""Issue 26: the same hostile inputs through every way into prediction, each refused the same way.

NaN voxels, the wrong channel count, a 2D image for a 3D model and a case that does not fit the memory budget (1.3 GB)
go through ``nnseg predict`` (CLI), the Python API (``predict``, ``predict_arrays``, ``run_prediction`` with a folder
and with arrays), ``--cluster local:1``, and ``nnseg serve`` (sync, jobs, MONAI Label ``/infer``, a DICOM zip). Each is
refused with the same message part (an HTTP status on the server), nothing is written for the case, and the server
still answers afterwards. A tiny 3D model (Hippocampus plans, 1 channel) keeps it fast.

SimpleITK reads NaN in NIfTI as 0, so the NaN case goes through a model whose plans read with NibabelIO (and as
``.nrrd`` through the server); the others use SimpleITKIO.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from shared_paths import EXPECTED
from test_reliability_predict import _image, _model
from test_serve import _start

from nnseg.cli.main import main
from nnseg.predictions.inference.options import PredictOptions
from nnseg.predictions.run.predict import predict, predict_arrays
from nnseg.predictions.request import PredictRequest, run_prediction
from nnseg.raw.image_io import get_io

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUDGET = "1.3"
#: kind -> (the message part every entry point gives, the server's status)
REFUSALS = {"nan": ("1 NaN or infinite value(s)", 422), "channels": ("expects 1", 422),
            "2d": ("is a 2D image", 422), "too big": ("does not fit in memory", 413)}
OPTIONS = PredictOptions(folds=(0,), device="cpu", precision="fp32", use_tta=False, max_memory_gb=float(BUDGET))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not EXPECTED.is_dir():
        pytest.skip(f"golden files not found at {EXPECTED} (set NNSEG_SHARED)")
    root = tmp_path_factory.mktemp("hostile")
    models = {"sitk": _model(root / "sitk_results", EXPECTED),
              "nibabel": _model(root / "nib_results", EXPECTED, reader="NibabelIO")}
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, size=(10, 14, 12))
    nan = volume.copy()
    nan[2, 3, 4] = np.nan
    (root / "nan").mkdir()
    nibabel.save(nibabel.Nifti1Image(nan.astype(np.float32), np.eye(4)), str(root / "nan" / "case_a_0000.nii.gz"))
    _image(root / "channels" / "case_a_0000.nii.gz", volume)
    _image(root / "channels" / "case_a_0001.nii.gz", volume)
    _image(root / "2d" / "case_a_0000.nii.gz", rng.normal(100, 20, size=(30, 40)))
    _image(root / "too big" / "case_a_0000.nii.gz", np.zeros((64, 64, 64)), spacing=(15.0, 15.0, 15.0))
    return {"root": root, **models}


def _model_for(setup: dict[str, Path], kind: str) -> Path:
    return setup["nibabel" if kind == "nan" else "sitk"]


def _nothing_written(out: Path) -> None:
    """No prediction, no temporary file, no lock (the run files nnU-Net writes first may exist)."""
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert [n for n in left if n.startswith("case_a") or n.startswith(".")] == [], left


def _refused(call: Callable[[], object], kind: str) -> str:
    with pytest.raises((ValueError, OSError)) as refusal:
        call()
    assert REFUSALS[kind][0] in str(refusal.value), str(refusal.value)
    return str(refusal.value)


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_cli_and_python_api_refuse_alike(setup: dict[str, Path], kind: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model, images = _model_for(setup, kind), setup["root"] / kind
    out = tmp_path / "cli"
    rc = main(["predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0", "-device",
               "cpu", "--precision", "fp32", "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0",
               "--max-memory", BUDGET])
    err = capsys.readouterr().err
    assert rc == 1 and REFUSALS[kind][0] in err and "Traceback" not in err, err
    _nothing_written(out)
    quiet = {"progress": False, "num_processes_preprocessing": 0, "num_processes_export": 0}
    _refused(lambda: predict(model, images, tmp_path / "py", OPTIONS, **quiet), kind)
    _nothing_written(tmp_path / "py")
    request = PredictRequest(model=model, input_folder=images, output=tmp_path / "run", options=OPTIONS, progress=False)
    _refused(lambda: run_prediction(request), kind)
    _nothing_written(tmp_path / "run")
    data, geometry = get_io("NibabelIO" if kind == "nan" else "SimpleITKIO").read_images(sorted(images.iterdir()))
    _refused(lambda: predict_arrays(model, [data], [geometry], OPTIONS), kind)
    _refused(lambda: run_prediction(PredictRequest(model=model, arrays=[data], geometries=[geometry],
                                                   options=OPTIONS)), kind)


def _on_cluster(model: Path, images: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nnseg.cli.main", "predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m",
           str(model), "-f", "0", "-device", "cpu", "--disable_tta", "--precision", "fp32", "--disable_progress_bar",
           "--max-memory", BUDGET, "--cluster", "local:1"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NNSEG_DEBUG": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_cluster_refuses_alike(setup: dict[str, Path], tmp_path: Path) -> None:
    """On a cluster a bad case fails alone (named in the last line, nothing written for it); a case with the wrong
    channel files is refused before the cluster starts, as on one machine."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for kind, name in (("2d", "case_flat"), ("too big", "case_big")):
        shutil.copy(setup["root"] / kind / "case_a_0000.nii.gz", mixed / f"{name}_0000.nii.gz")
    runs = [(setup["sitk"], mixed, ["2d", "too big"]), (setup["nibabel"], setup["root"] / "nan", ["nan"]),
            (setup["sitk"], setup["root"] / "channels", ["channels"])]
    for i, (model, images, kinds) in enumerate(runs):
        out = tmp_path / f"out{i}"
        proc = _on_cluster(model, images, out)
        assert proc.returncode == 1, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        for kind in kinds:
            assert REFUSALS[kind][0] in last, last
        assert not list(out.glob("case_*")) and not list(out.rglob(".*")), sorted(out.rglob("*"))


@pytest.fixture(scope="module")
def server(setup: dict[str, Path]) -> Iterator[dict[str, object]]:
    tmp = setup["root"] / "server_tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NNSEG_SERVE_TOKEN"}
    env.update(TMPDIR=str(tmp), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc, url, _ = _start(["--models", f"tiny={setup['sitk']}", "--port", "0", "-f", "0", "-device", "cpu",
                           "--precision", "fp32", "--disable_tta", "--max-memory", BUDGET, "--log_level", "warning"],
                          env)
    yield {"url": url, "tmp": tmp}
    proc.terminate()
    proc.wait(timeout=60)
    proc.stdout.close()  # type: ignore[union-attr]


def _uploads(setup: dict[str, Path], kind: str) -> list[tuple[str, tuple[str, bytes]]]:
    """The hostile case as the server takes it (``.nrrd``: SimpleITK keeps NaN there)."""
    files = sorted((setup["root"] / kind).iterdir())
    out = []
    for i, path in enumerate(files):
        if kind == "nan":
            data = nibabel.load(str(path)).get_fdata().astype(np.float32)
            image = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))
        else:
            image = sitk.ReadImage(str(path))
        target = setup["root"] / "uploads" / kind / f"{i}.nrrd"
        target.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(target))
        out.append(("file", (target.name, target.read_bytes())))
    return out


def _dicom_zip(setup: dict[str, Path], kind: str) -> bytes:
    from dicom_synth import write_series

    image = sitk.ReadImage(str(setup["root"] / kind / "case_a_0000.nii.gz"))
    folder = setup["root"] / "dicom" / kind
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(image.GetSpacing()) + (1.0,) * (3 - image.GetDimension())
    write_series(array if array.ndim == 3 else array[None], folder, spacing=spacing)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_server_refuses_alike_and_keeps_serving(setup: dict[str, Path], server: dict, kind: str) -> None:
    url = str(server["url"])
    text, status = REFUSALS[kind]
    for endpoint in ("/v1/models/tiny/predict", "/v1/models/tiny/jobs", "/infer/tiny"):
        r = httpx.post(url + endpoint, files=_uploads(setup, kind), timeout=120)
        if endpoint.endswith("/jobs") and r.status_code == 202:  # refused once its voxels are read (NaN)
            job = r.json()["id"]
            for _ in range(600):
                state = httpx.get(f"{url}/v1/jobs/{job}").json()
                if state["status"] in ("failed", "done"):
                    break
                time.sleep(0.1)
            assert state["status"] == "failed" and text in state["error"], state
            r = httpx.get(f"{url}/v1/jobs/{job}/result")
            assert r.status_code == 409 and text in r.json()["detail"], r.text
            httpx.delete(f"{url}/v1/jobs/{job}")
            continue
        assert r.status_code == status and text in r.json()["detail"], (endpoint, r.status_code, r.text)
    if kind in ("2d", "too big"):  # a DICOM series zip, refused from its headers
        r = httpx.post(f"{url}/v1/models/tiny/predict", files={"file": ("s.zip", _dicom_zip(setup, kind))}, timeout=120)
        assert r.status_code == status and ("2D image" if kind == "2d" else text) in r.json()["detail"], r.text
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/v1/models").json()["queue"]["running"] == 0
