"""Partial labels through the real commands: verify, plan and preprocess carry the key, training and the final
validation score each case only on the labels it draws."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnseg.cli.main import main
from nnseg.jsonio import load_json, save_json
from nnseg.raw.demo_data import make_demo_dataset

pytestmark = pytest.mark.slow
NAME = "Dataset993_Partial"


def _drop(label_file: Path, value: int) -> None:
    img = nib.load(label_file)
    seg = np.asarray(img.dataobj).astype(np.uint8)
    out = nib.Nifti1Image(np.where(seg == value, 0, seg).astype(np.uint8), img.affine, img.header)
    out.set_data_dtype(np.uint8)
    nib.save(out, label_file)


def test_partial_dataset_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "res"), "HOME": str(tmp_path), "nnUNet_n_proc_DA": "0"}
    raw = make_demo_dataset(Path(env["nnUNet_raw"]) / NAME, num_cases=6, num_test=0, shape=(16, 20, 20))
    spec = load_json(raw / "dataset.json")
    annotated = {}
    for i, label_file in enumerate(sorted((raw / "labelsTr").glob("*.nii.gz"))):
        case = label_file.name.removesuffix(".nii.gz")
        if i % 2 == 0:  # even cases: the organ only (the lesion inside it becomes background)
            annotated[case] = ["organ"]
            _drop(label_file, 2)
    save_json({**spec, "annotated_labels": {**annotated, "case_001": ["lesion"]}}, raw / "dataset.json")
    assert main(["verify", "-d", "993"], env=env) == 1  # case_001 still draws the organ it says it does not
    assert "case 'case_001' holds label(s) [1]" in capsys.readouterr().out
    save_json({**spec, "annotated_labels": annotated}, raw / "dataset.json")
    assert main(["plan-and-preprocess", "-d", "993", "-c", "3d_fullres", "-np", "1", "--no_pbar",
                 "--verify_dataset_integrity"], env=env) == 0
    assert load_json(Path(env["nnUNet_preprocessed"]) / NAME / "dataset.json")["annotated_labels"] == annotated
    args = ["train", "993", "3d_fullres", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--set",
            "val_iterations_per_epoch=1", "--set", "batch_size=2", "--seed", "0", "-device", "cpu",
            "-tr", "nnUNetTrainerNoMirroring", "--set", "full_val_every=1"]
    assert main(args, env=env) == 0
    model = Path(env["nnUNet_results"]) / NAME / "nnUNetTrainer_1epoch_NoMirroring__nnUNetPlans__3d_fullres"
    assert load_json(model / "dataset.json")["annotated_labels"] == annotated
    summary = load_json(model / "fold_0" / "validation" / "summary.json")
    for case in summary["metric_per_case"]:
        identifier = Path(case["reference_file"]).name.removesuffix(".nii.gz")
        lesion = case["metrics"]["2"]["Dice"]
        assert math.isnan(lesion) if identifier in annotated else not math.isnan(lesion), identifier
