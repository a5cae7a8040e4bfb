"""The golden Hippocampus model nnU-Net v2 trained (``reference/expected``), installed for a test (one helper, so the
prediction, serving, ONNX and DICOM tests do not each repeat the paths, the skip and the install)."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_paths import DATA, EXPECTED

from nnseg.sharing.install import install_model_zip

MODEL_ZIP = EXPECTED / "Dataset004_Hippocampus" / "model" / "model.zip"
IMAGES = DATA / "Task04_Hippocampus" / "imagesTr"  # MSD naming: <case>.nii.gz
MODEL_PATH = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2"


def install_golden_model(results: Path) -> Path:
    """Install the golden model zip into ``results`` and return its model folder (skip when the files are missing)."""
    if not MODEL_ZIP.is_file() or not IMAGES.is_dir():
        pytest.skip(f"golden model or images missing ({MODEL_ZIP}, {IMAGES})")
    install_model_zip(MODEL_ZIP, results)
    return results / MODEL_PATH
