"""``evaluate_folder`` on nnU-Net's own Hippocampus predictions reproduces its ``summary.json`` number for number."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from nnseg.metrics.evaluate import evaluate_folder, evaluate_folder_with_dataset

pytestmark = pytest.mark.golden

MODEL = Path("Dataset004_Hippocampus") / "model"


def _assert_same(ours: Any, golden: Any, where: str = "") -> None:
    if isinstance(golden, dict):
        assert isinstance(ours, dict) and list(ours) == list(golden), f"{where}: keys {list(ours)} != {list(golden)}"
        for k in golden:
            if k in ("reference_file", "prediction_file"):
                assert Path(ours[k]).name == Path(golden[k]).name, where
                continue
            _assert_same(ours[k], golden[k], f"{where}/{k}")
    elif isinstance(golden, list):
        assert isinstance(ours, list) and len(ours) == len(golden), where
        for i, (a, b) in enumerate(zip(ours, golden)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(golden, float) and math.isnan(golden):
        assert isinstance(ours, float) and math.isnan(ours), where
    else:
        assert type(ours) is type(golden), f"{where}: {type(ours).__name__} vs {type(golden).__name__}"
        assert ours == pytest.approx(golden, rel=1e-6, abs=1e-6), where


@pytest.fixture
def hippocampus_eval(tmp_path: Path, expected_dir: Path, shared_data: Path) -> tuple[Path, Path, dict[str, Any]]:
    model = expected_dir / MODEL
    cases = (model / "cases.txt").read_text().split()
    gt = tmp_path / "gt"
    gt.mkdir()
    for case in cases:
        shutil.copy(shared_data / "Task04_Hippocampus" / "labelsTr" / f"{case}.nii.gz", gt / f"{case}.nii.gz")
    golden = json.loads((model / "summary_predictions_tta.json").read_text())
    return gt, model / "predictions_tta", golden


def test_summary_json_equals_nnunet(hippocampus_eval, tmp_path: Path):
    gt, pred, golden = hippocampus_eval
    out = tmp_path / "summary.json"
    evaluate_folder(gt, pred, labels_or_regions=[1, 2], file_ending=".nii.gz", io="SimpleITKIO", output_file=out,
                    num_processes=1)
    written = json.loads(out.read_text())
    _assert_same(written, golden)
    # layout: same keys order and indentation as nnU-Net's sort_keys=True, indent=4 (only the paths differ)
    text = out.read_text()
    assert text.startswith('{\n    "foreground_mean": {\n        "Dice": ')
    assert not text.endswith("\n")
    assert json.dumps(written, sort_keys=True, indent=4) == text


def test_dataset_json_entry_with_worker_processes(hippocampus_eval, tmp_path: Path, expected_dir: Path):
    gt, pred, golden = hippocampus_eval
    out = tmp_path / "s.json"
    summary = evaluate_folder_with_dataset(gt, pred, dataset_json_file=expected_dir / "Dataset004_Hippocampus" / "dataset.json",
                                           plans_file=expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json",
                                           output_file=out, num_processes=2)
    _assert_same(json.loads(out.read_text()), golden)
    assert summary["mean"][1]["Dice"] == pytest.approx(golden["mean"]["1"]["Dice"], abs=1e-12)


def test_missing_prediction_is_an_error_unless_chill(hippocampus_eval, tmp_path: Path):
    gt, pred, _ = hippocampus_eval
    shutil.copy(gt / "hippocampus_020.nii.gz", gt / "hippocampus_999.nii.gz")
    with pytest.raises(FileNotFoundError, match="hippocampus_999"):
        evaluate_folder(gt, pred, labels_or_regions=[1, 2], file_ending=".nii.gz", io="SimpleITKIO", num_processes=1)
    summary = evaluate_folder(gt, pred, labels_or_regions=[1, 2], file_ending=".nii.gz", io="SimpleITKIO",
                              num_processes=1, chill=True)
    assert len(summary["metric_per_case"]) == 10


def test_summary_json_is_byte_identical_with_nnunet_paths(hippocampus_eval, tmp_path: Path, monkeypatch,
                                                          expected_dir: Path):
    gt, pred, _ = hippocampus_eval
    work = tmp_path / "work"
    work.mkdir()
    gt.rename(work / "gold_gt")  # the folder names nnU-Net was run with
    (work / "gold_pred_tta").symlink_to(pred, target_is_directory=True)
    monkeypatch.chdir(work)
    evaluate_folder("gold_gt", "gold_pred_tta", labels_or_regions=[1, 2], file_ending=".nii.gz", io="SimpleITKIO",
                    output_file="summary.json", num_processes=1)
    assert (work / "summary.json").read_bytes() == (expected_dir / MODEL / "summary_predictions_tta.json").read_bytes()
