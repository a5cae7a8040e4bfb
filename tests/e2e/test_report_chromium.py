"""The HTML report of a (synthetic) trained model renders in headless Chromium from disk, with its plots and table.

Needs the ``chromium`` program (Debian package ``chromium``; ``.ci/run`` installs it because ``tests/.needs-chromium``
exists). Without it the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnseg.cli.main import main
from nnseg.metrics.evaluate import evaluate_folder_with_dataset
from nnseg.training.hooks import plot_progress

DATASET = "Dataset321_Blobs"
MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                 reason="chromium is not on PATH (apt-get install chromium; .ci/run installs it)")]


@pytest.fixture(autouse=True)
def _chromium_present_in_ci() -> None:
    if CHROMIUM is None:  # only reached in CI (elsewhere the module skips): a missing browser is a failure there
        pytest.fail("chromium is missing in CI (.ci/run installs the Debian package chromium)")


def _write(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(path))


def _case(rng: np.random.Generator, shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 8x48x48 image with two blobs (labels 1 and 2) and a prediction shifted by ``shift`` voxels."""
    z, y, x = np.mgrid[:8, :48, :48]
    ref = np.zeros((8, 48, 48), dtype=np.uint8)
    ref[((y - 20) ** 2 + (x - 18) ** 2 < 80) & (abs(z - 4) < 3)] = 1
    ref[((y - 30) ** 2 + (x - 32) ** 2 < 40) & (abs(z - 4) < 2)] = 2
    image = (rng.normal(50, 10, ref.shape) + 60 * (ref > 0)).astype(np.float32)
    return image, ref, np.roll(ref, shift, axis=2)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    raw, gt = tmp_path / "raw" / DATASET, tmp_path / "preprocessed" / DATASET / "gt_segmentations"
    folder = tmp_path / "results" / DATASET / MODEL
    spec = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
            "numTraining": 4, "file_ending": ".nii.gz"}
    for f in (raw / "dataset.json", folder / "dataset.json"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(spec))
    for i, shift in enumerate([0, 1, 3, 6]):
        image, ref, pred = _case(rng, shift)
        _write(image, raw / "imagesTr" / f"blob_{i:03d}_0000.nii.gz")
        _write(ref, gt / f"blob_{i:03d}.nii.gz")
        _write(pred, folder / "fold_0" / "validation" / f"blob_{i:03d}.nii.gz")
    evaluate_folder_with_dataset(gt, folder / "fold_0" / "validation", dataset_json_file=folder / "dataset.json",
                                 num_processes=1)
    n = 20
    log = {"train_losses": list(np.linspace(0.5, -0.7, n)), "val_losses": list(np.linspace(0.4, -0.6, n)),
           "mean_fg_dice": list(np.linspace(0, 0.85, n)), "ema_fg_dice": list(np.linspace(0, 0.8, n)),
           "epoch_start_timestamps": list(range(n)), "epoch_end_timestamps": [t + 0.9 for t in range(n)],
           "lrs": list(np.linspace(0.01, 0.001, n))}
    plot_progress(log, folder / "fold_0" / "progress.png")
    return folder


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=90, check=False)


def test_report_renders_in_headless_chromium(model: Path, tmp_path: Path) -> None:
    env = {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
           "nnUNet_results": str(tmp_path / "results"), "HOME": str(tmp_path)}
    assert main(["report", str(model), "--worst", "2"], env=env, cwd=tmp_path) == 0
    page = (model / "report.html").as_uri()
    shot = tmp_path / "screenshot.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", page], tmp_path)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 100, f"screenshot {shot} looks blank ({len(colours)} colours)"
    dom = _chromium(["--dump-dom", page], tmp_path).stdout
    assert '<table class="dice">' in dom and dom.count('<td class="case">blob_') == 4
    assert 'alt="Dice box plot of fold_0"' in dom and 'alt="training progress of fold_0"' in dom
    assert dom.count('alt="overlay of blob_') == 2 and 'src="data:image/png;base64,' in dom
