"""``nnseg refine`` from the command line on real data: the golden Hippocampus model (nnU-Net v2 trained it) run first
by ``refine`` itself equals ``nnUNetv2_predict`` followed by ``refine --seg`` on its output, byte for byte in the
arrays, with the image's geometry (the label named as in the model's dataset.json); the automatic segmentation it
saves is ``nnUNetv2_predict``'s; an unknown automatic model or label is refused with nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from golden_model import IMAGES, install_golden_model
from interactive_model import write_model_folder
from nnseg.cli.main import main

CASE = "hippocampus_020"
MODEL = ["-d", "Dataset004_Hippocampus", "-c", "3d_fullres_bs2", "-tr", "nnUNetTrainer_bench", "-f", "0",
         "--disable_tta", "-device", "cpu", "--precision", "fp32"]


def _nnseg(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nnseg.cli.main", *argv], env=env, capture_output=True, text=True,
                          timeout=600)


def _array(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_refine_runs_the_model_as_nnunetv2_predict_then_refines(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    install_golden_model(results)
    images = tmp_path / "in"
    images.mkdir()
    scan = images / f"{CASE}_0000.nii.gz"
    shutil.copy(IMAGES / f"{CASE}.nii.gz", scan)
    folder = write_model_folder(tmp_path / "interactive")
    env = {**os.environ, "nnUNet_results": str(results), "nnUNet_raw": str(tmp_path / "raw"),
           "nnUNet_preprocessed": str(tmp_path / "pre"), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", "from nnseg.cli.scripts import nnUNetv2_predict; nnUNetv2_predict()",
                           "-i", str(images), "-o", str(tmp_path / "pred"), *MODEL, "--disable_progress_bar"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    predicted, reference = _array(tmp_path / "pred" / f"{CASE}.nii.gz")
    k, j, i = np.argwhere(predicted == 1).mean(axis=0).round().astype(int)  # a voxel of label 1 (file order i, j, k)
    prompts = ["--label", "Anterior", "--point", f"{i},{j},{k}", "--negative-point", f"{i},{j},{max(k - 6, 0)}",
               "--interactive", str(folder)]

    ran = _nnseg(env, "refine", "-i", str(scan), *MODEL, *prompts, "-o", str(tmp_path / "a.nii.gz"),
                 "--save-automatic", str(tmp_path / "auto.nii.gz"))
    assert ran.returncode == 0, ran.stderr
    assert "label 1:" in ran.stderr and "automatic model" in ran.stderr
    seeded = _nnseg(env, "refine", "-i", str(scan), "--seg", str(tmp_path / "pred" / f"{CASE}.nii.gz"), *prompts,
                    "--label", "1",
                    "-o", str(tmp_path / "b.nii.gz"), "-device", "cpu", "--precision", "fp32")
    assert seeded.returncode == 0, seeded.stderr

    automatic, _ = _array(tmp_path / "auto.nii.gz")
    np.testing.assert_array_equal(automatic, predicted)
    refined, image = _array(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(refined, _array(tmp_path / "b.nii.gz")[0])
    assert (refined != predicted).any() and set(np.unique(refined)) <= {0, 1, 2}
    assert (refined == 2).sum() <= (predicted == 2).sum()  # label 2 kept, except where label 1 grew over it
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(image, get)(), getattr(reference, get)(), atol=1e-6)
    print(f"\nrefine: {(refined != predicted).sum()} voxels changed from the automatic segmentation")

    out = tmp_path / "never.nii.gz"
    code = main(["refine", "-i", str(scan), "-d", "4", "-c", "2d", *prompts, "-o", str(out)], env=env)
    assert code == 1 and not out.exists()
    code = main(["refine", "-i", str(scan), *MODEL, *prompts, "--label", "3", "-o", str(out)], env=env)
    assert code == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "label(s) [3] are not predicted by" in err and "its labels: 1 (Anterior), 2 (Posterior)" in err


@pytest.fixture(autouse=True)
def _golden_present() -> None:
    if not IMAGES.is_dir():
        pytest.skip(f"Hippocampus images missing ({IMAGES})")
