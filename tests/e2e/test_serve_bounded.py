"""Issue 26: ``nnseg serve`` plans every case with the memory plan ``nnseg predict`` uses, against the server's budget.

A 24-class model (the tiny Hippocampus U-Net) and a 24x64x64 case: its one-shot estimate is above the budget the
server is started with (``--max-memory``, chosen between the two estimates), its bounded estimate below it. The real
server (uvicorn on 127.0.0.1, a subprocess) answers it through the bounded path with the labels ``nnseg predict
--max-memory`` writes for the same budget; a case that does not fit even
bounded is answered 413 with the estimate and the budget before it is queued (no job id, no job), and the server keeps
answering.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from shared_paths import EXPECTED
from test_serve import _start
from tiny_golden_plans import tiny_3d_configuration

from nnseg.cli.main import main
from nnseg.networks import build_network
from nnseg.predictions.run.bounded import MemoryPolicy, check_case_header
from nnseg.predictions.inference.checkpoint import save_checkpoint
from nnseg.predictions.inference.memory_plan import GIB
from nnseg.predictions.inference.predictor import Predictor
from nnseg.raw.discover import CaseFiles

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CLASSES = 24
SHAPE = (24, 64, 64)  # (z, y, x)


def _model(root: Path) -> Path:
    golden = EXPECTED / "Dataset004_Hippocampus"
    plans = json.loads((golden / "nnUNetPlans.json").read_text())
    plans.update(dataset_name="Dataset778_ManyLabels", configurations={"3d_tiny": tiny_3d_configuration(plans)})
    dataset = json.loads((golden / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, **{f"l{i}": i for i in range(1, CLASSES)}}
    folder = root / "Dataset778_ManyLabels" / "nnUNetTrainer__nnUNetPlans__3d_tiny"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.manual_seed(0)
    net = build_network(plans["configurations"]["3d_tiny"]["architecture"], input_channels=1, num_classes=CLASSES,
                        deep_supervision=False)
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                     "init_args": {"configuration": "3d_tiny", "fold": 0}, "current_epoch": 1,
                     "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _image(path: Path, array: np.ndarray, spacing: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    sitk.WriteImage(image, str(path))
    return path


def _budget_between_the_paths(model: Path, image: Path) -> str:
    """``--max-memory`` (GB, as text) halfway between the case's bounded and one-shot estimates."""
    predictor = Predictor.from_model_folder(model, folds=(0,), device="cpu", precision="fp32", use_tta=False)
    case = CaseFiles(identifier="case_a", images=(image,), label=None)
    one_shot = check_case_header(predictor, case, MemoryPolicy(1 << 50, "test"))
    bounded = check_case_header(predictor, case, MemoryPolicy(1 << 50, "test", slab_rows=1))
    assert one_shot.mode == "one-shot" and bounded.mode == "bounded"
    budget = f"{(one_shot.estimate + bounded.estimate) / 2 / GIB:.4f}"
    plan = check_case_header(predictor, case, MemoryPolicy(int(float(budget) * GIB), "test"))
    assert plan.mode == "bounded" and one_shot.estimate > float(budget) * GIB, (plan, one_shot)
    return budget


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    if not EXPECTED.is_dir():
        pytest.skip(f"golden files not found at {EXPECTED} (set NNSEG_SHARED)")
    root = tmp_path_factory.mktemp("serve_bounded")
    model = _model(root / "results")
    rng = np.random.default_rng(0)
    image = _image(root / "images" / "case_a_0000.nii.gz", rng.normal(100, 30, size=SHAPE) + 300)
    _image(root / "huge" / "case_a_0000.nii.gz", np.ones((64, 64, 64)), spacing=6.0)  # 384^3 on the network grid
    budget = _budget_between_the_paths(model, image)
    tmp = root / "server_tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NNSEG_SERVE_TOKEN"}
    env.update(TMPDIR=str(tmp), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc, url, lines = _start(["--models", f"many={model}", "--port", "0", "-f", "0", "-device", "cpu", "--precision",
                               "fp32", "--disable_tta", "--max-memory", budget, "--log_level", "warning"], env)
    yield {"root": root, "model": model, "image": image, "budget": budget, "url": url, "lines": lines, "tmp": tmp}
    proc.terminate()
    proc.wait(timeout=60)
    proc.stdout.close()  # type: ignore[union-attr]


def _cli(model: Path, images: Path, out: Path, *extra: str) -> np.ndarray:
    assert main(["predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0", "-device",
                 "cpu", "--precision", "fp32", "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0",
                 *extra]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_a.nii.gz")))


def test_serve_answers_through_the_bounded_path_with_the_clis_labels(setup: dict) -> None:
    assert any(f"memory budget {float(setup['budget']):.2f} GB" in line for line in setup["lines"]), setup["lines"]
    image = Path(setup["image"])
    r = httpx.post(f"{setup['url']}/v1/models/many/predict", files={"file": (image.name, image.read_bytes())},
                   timeout=300)
    assert r.status_code == 200, r.text
    answer = Path(setup["root"]) / "answer.nii.gz"
    answer.write_bytes(r.content)
    served = sitk.GetArrayFromImage(sitk.ReadImage(str(answer)))
    model, images, root = Path(setup["model"]), image.parent, Path(setup["root"])
    cli = _cli(model, images, root / "cli", "--max-memory", str(setup["budget"]))
    assert served.shape == SHAPE and len(np.unique(served)) > 3
    np.testing.assert_array_equal(served, cli)


def test_a_case_over_the_budget_even_bounded_is_refused_before_it_is_queued(setup: dict) -> None:
    url, huge = str(setup["url"]), Path(setup["root"]) / "huge" / "case_a_0000.nii.gz"
    for endpoint in ("/v1/models/many/predict", "/v1/models/many/jobs", "/infer/many"):
        r = httpx.post(url + endpoint, files={"file": (huge.name, huge.read_bytes())}, timeout=120)
        assert r.status_code == 413, (endpoint, r.text)
        detail = r.json()["detail"]
        assert "does not fit in memory" in detail and f"--max-memory {float(setup['budget']):g}" in detail, detail
        assert "GB (baseline" in detail and str(setup["tmp"]) not in detail, detail  # the estimate, no server path
    jobs = Path(setup["tmp"]).glob("nnseg-serve-*/jobs/*")
    assert list(jobs) == []  # nothing was queued, nothing left
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the server keeps answering
    listing = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert set(listing["queue"].values()) == {0} and listing["memory_in_use_bytes"] == 0, listing
    assert listing["memory_budget_bytes"] == int(float(setup["budget"]) * GIB)
