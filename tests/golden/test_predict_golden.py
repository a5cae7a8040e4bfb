"""nnU-Net's own trained Hippocampus model (golden zip) predicts through nnseg as nnU-Net predicted it.

Acceptance of issue 4: per case and label Dice >= 0.99 against nnU-Net's predictions and probabilities within 1e-2,
with mirroring TTA (``predictions_tta``) and without (``predictions_notta``); default precision Dice >= 0.99.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.sharing.install import install_model_zip
from nnseg.predictions.run.predict import Predictor, predict
from nnseg.predictions.export.predict_io import load_probabilities_npz, load_properties_pkl

pytestmark = [pytest.mark.golden, pytest.mark.slow]
MODEL = "Dataset004_Hippocampus/nnUNetTrainer_bench__nnUNetPlans__3d_fullres_bs2"
TTA_CASES = 3  # TTA costs 8 network passes per case: a few cases suffice, all 10 run without TTA


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from shared_paths import DATA, EXPECTED

    model_dir = EXPECTED / "Dataset004_Hippocampus" / "model"
    images = DATA / "Task04_Hippocampus" / "imagesTr"
    if not model_dir.is_dir() or not images.is_dir():
        pytest.skip(f"golden model or images missing ({model_dir}, {images})")
    root = tmp_path_factory.mktemp("golden_predict")
    installed = install_model_zip(model_dir / "model.zip", root / "results")
    assert installed == [root / "results" / MODEL]
    cases = model_dir.joinpath("cases.txt").read_text().split()
    for n, subset in (("all", cases), ("few", cases[:TTA_CASES])):
        (root / n).mkdir()
        for case in subset:
            (root / n / f"{case}_0000.nii.gz").symlink_to(images / f"{case}.nii.gz")
    return {"root": root, "model": root / "results" / MODEL, "ref": model_dir, "all": root / "all", "few": root / "few"}


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    denom = (a == label).sum() + (b == label).sum()
    return 1.0 if denom == 0 else float(2 * ((a == label) & (b == label)).sum() / denom)


def _compare(out: Path, ref: Path, *, probabilities: bool) -> list[str]:
    problems = []
    outputs = sorted(out.glob("*.nii.gz"))
    assert outputs
    for seg_file in outputs:
        case = seg_file.name[: -len(".nii.gz")]
        ours = sitk.ReadImage(str(seg_file))
        theirs = sitk.ReadImage(str(ref / seg_file.name))
        assert ours.GetSpacing() == theirs.GetSpacing() and ours.GetOrigin() == theirs.GetOrigin()
        assert ours.GetDirection() == theirs.GetDirection()
        a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
        problems += [f"{case} label {lab}: Dice {_dice(a, b, lab):.4f}" for lab in (1, 2) if _dice(a, b, lab) < 0.99]
        if probabilities:
            p, q = load_probabilities_npz(out / f"{case}.npz"), load_probabilities_npz(ref / f"{case}.npz")
            assert p.shape == q.shape
            if np.abs(p - q).max() > 1e-2:
                problems.append(f"{case}: probabilities differ by {np.abs(p - q).max():.4f}")
            assert (out / f"{case}.pkl").read_bytes() == (ref / f"{case}.pkl").read_bytes()
            assert load_properties_pkl(out / f"{case}.pkl")["shape_before_cropping"] == a.shape
    return problems


def test_fp32_matches_nnunet_with_and_without_tta(golden: dict[str, Path]) -> None:
    predictor = Predictor.from_model_folder(golden["model"], folds=(0,), device="cpu", precision="fp32")
    assert predictor.mirror_axes == (0, 1, 2)
    out = golden["root"] / "out_tta"
    predict(predictor, golden["few"], out, save_probabilities=True, progress=False)
    assert _compare(out, golden["ref"] / "predictions_tta", probabilities=True) == []
    assert {p.name for p in out.glob("*.json")} == {"dataset.json", "plans.json", "predict_from_raw_data_args.json"}
    predictor.use_tta = False
    out = golden["root"] / "out_notta"
    report = predict(predictor, golden["all"], out, save_probabilities=True, progress=False)
    assert len(report.written) == 10
    assert _compare(out, golden["ref"] / "predictions_notta", probabilities=True) == []


def test_default_precision_matches_nnunet(golden: dict[str, Path]) -> None:
    predictor = Predictor.from_model_folder(golden["model"], folds=(0,), device="cpu", use_tta=False)
    out = golden["root"] / "out_default"
    predict(predictor, golden["all"], out, progress=False, num_processes_preprocessing=0, num_processes_export=0)
    assert _compare(out, golden["ref"] / "predictions_notta", probabilities=False) == []
