"""Overlap metrics and the summary aggregation: nnU-Net's definitions and edge conventions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnseg.metrics.evaluate import (
    aggregate_metrics,
    case_metrics,
    evaluate_folder,
    evaluate_folder_simple,
    evaluate_folder_with_dataset,
    summary_to_json,
)
from nnseg.metrics.overlap import (
    compute_tp_fp_fn_tn,
    key_to_label_or_region,
    label_or_region_to_key,
    metrics_from_counts,
    overlap_metrics,
    region_or_label_to_mask,
)


def test_counts_against_brute_force(rng):
    ref = rng.random((5, 6, 7)) > 0.5
    pred = rng.random((5, 6, 7)) > 0.5
    ignore = rng.random((5, 6, 7)) > 0.8
    tp, fp, fn, tn = compute_tp_fp_fn_tn(ref, pred, ignore)
    expected = [0, 0, 0, 0]
    for r, p, i in zip(ref.ravel(), pred.ravel(), ignore.ravel()):
        if i:
            continue
        expected[0 if r and p else 1 if p else 2 if r else 3] += 1
    assert [tp, fp, fn, tn] == expected
    assert sum(compute_tp_fp_fn_tn(ref, pred)) == ref.size


def test_dice_iou_values_and_nan_when_both_empty():
    m = metrics_from_counts(3, 1, 2, 10)
    assert m["Dice"] == 6 / 9 and m["IoU"] == 3 / 6
    assert (m["n_pred"], m["n_ref"]) == (4, 5)
    assert list(m) == ["Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"]
    empty = metrics_from_counts(0, 0, 0, 7)
    assert math.isnan(empty["Dice"]) and math.isnan(empty["IoU"]) and empty["TN"] == 7
    assert metrics_from_counts(0, 1, 0, 0)["Dice"] == 0.0


def test_regions_and_ignore_label():
    ref = np.array([0, 1, 2, 3, 3, 4, 4])
    pred = np.array([1, 1, 3, 2, 0, 4, 0])
    assert region_or_label_to_mask(ref, (2, 3)).tolist() == [False, False, True, True, True, False, False]
    out = overlap_metrics(ref, pred, [1, (2, 3), [1, 2, 3]], ignore_label=4)
    assert list(out) == [1, (2, 3), (1, 2, 3)]
    assert (out[1]["TP"], out[1]["FP"], out[1]["FN"], out[1]["TN"]) == (1, 1, 0, 3)
    assert (out[(2, 3)]["TP"], out[(2, 3)]["FN"]) == (2, 1)
    assert sum(out[1][k] for k in ("TP", "FP", "FN", "TN")) == 5  # the two ignore voxels are left out


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        overlap_metrics(np.zeros((2, 3)), np.zeros((3, 2)), [1])


def test_keys_round_trip():
    assert label_or_region_to_key(1) == "1"
    assert label_or_region_to_key((1, 2, 3)) == "(1, 2, 3)"
    assert label_or_region_to_key(np.int64(2)) == "2"
    for k in ("1", "(1, 2, 3)", "(4,)"):
        assert label_or_region_to_key(key_to_label_or_region(k)) == k
    with pytest.raises(ValueError, match="neither"):
        key_to_label_or_region("liver")


def test_aggregation_nanmean_per_class_and_mean_over_foreground():
    cases = [
        {"metrics": {0: metrics_from_counts(5, 0, 0, 1), 1: metrics_from_counts(1, 1, 0, 4),
                     2: metrics_from_counts(0, 0, 0, 6)}},
        {"metrics": {0: metrics_from_counts(5, 0, 0, 1), 1: metrics_from_counts(2, 0, 0, 4),
                     2: metrics_from_counts(1, 0, 1, 4)}},
    ]
    means, fg = aggregate_metrics(cases, [0, 1, 2])
    assert means[1]["Dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert means[2]["Dice"] == pytest.approx(2 / 3)  # NaN case skipped
    assert fg["Dice"] == pytest.approx((means[1]["Dice"] + means[2]["Dice"]) / 2)  # label 0 left out
    assert fg["TP"] == pytest.approx((1.5 + 0.5) / 2)
    all_nan = [{"metrics": {1: metrics_from_counts(0, 0, 0, 3)}}] * 2
    means, fg = aggregate_metrics(all_nan, [1])
    assert math.isnan(means[1]["Dice"]) and math.isnan(fg["Dice"])  # no warning escapes (filterwarnings=error)


def test_summary_json_converts_keys():
    cases = [{"reference_file": "r/a.nii.gz", "prediction_file": "p/a.nii.gz",
              "metrics": {(1, 2): metrics_from_counts(1, 0, 0, 1)}}]
    means, fg = aggregate_metrics(cases, [(1, 2)])
    js = summary_to_json({"metric_per_case": cases, "mean": means, "foreground_mean": fg})
    assert list(js["mean"]) == ["(1, 2)"] and list(js["metric_per_case"][0]["metrics"]) == ["(1, 2)"]


def _write(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def tiny_folders(tmp_path: Path, rng) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in range(3):
        ref = rng.integers(0, 3, (4, 5, 6))
        _write(gt / f"c{i}.nii.gz", ref)
        _write(pred / f"c{i}.nii.gz", np.where(rng.random(ref.shape) > 0.8, 0, ref))
    (pred / "c0.npz").write_bytes(b"not an image")  # other files in the prediction folder are ignored
    return gt, pred


def test_evaluate_folder_tiny(tiny_folders, tmp_path: Path):
    gt, pred = tiny_folders
    s = evaluate_folder(gt, pred, labels_or_regions=[1, 2, (1, 2)], file_ending=".nii.gz", num_processes=1,
                        output_file=tmp_path / "out.json")
    assert [Path(c["prediction_file"]).name for c in s["metric_per_case"]] == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    assert all(c["metrics"][1]["FP"] == 0 for c in s["metric_per_case"])  # predictions only drop voxels
    assert "HD95" not in s["metric_per_case"][0]["metrics"][1]  # nnU-Net fields only by default
    js = json.loads((tmp_path / "out.json").read_text())
    assert list(js["mean"]) == ["(1, 2)", "1", "2"]  # sort_keys, as nnU-Net
    with pytest.raises(ValueError, match="must end with .json"):
        evaluate_folder(gt, pred, labels_or_regions=[1], file_ending=".nii.gz", output_file=tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="no predictions"):
        evaluate_folder(gt, pred, labels_or_regions=[1], file_ending=".mha")


def test_evaluate_simple_and_dataset_json(tiny_folders, tmp_path: Path):
    gt, pred = tiny_folders
    s = evaluate_folder_simple(gt, pred, labels=[1, 2], num_processes=1)
    assert (pred / "summary.json").is_file() and set(s["mean"]) == {1, 2}
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                              "numTraining": 3, "file_ending": ".nii.gz"}))
    s2 = evaluate_folder_with_dataset(gt, pred, dataset_json_file=dj, output_file=tmp_path / "d.json", num_processes=1)
    assert s2["mean"] == s["mean"]


def test_case_metrics_adds_surface_metrics_only_when_asked():
    from nnseg.metrics.surface import SurfaceOptions

    ref = np.zeros((1, 6, 6, 6), int)
    ref[0, 1:4, 1:4, 1:4] = 1
    out = case_metrics(ref, ref, [1], spacing=(1.0, 1.0, 1.0), surface=SurfaceOptions(nsd_tolerances_mm=(1.0, 2.0)))
    assert out[1]["HD95"] == 0.0 and out[1]["NSD@1.0mm"] == 1.0 and out[1]["NSD@2.0mm"] == 1.0
    assert out[1]["Dice"] == 1.0
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(ref, ref, [1], surface=SurfaceOptions())


def test_cli_evaluate_simple_and_evaluate(tiny_folders, tmp_path: Path, capsys):
    from nnseg.cli.main import main

    gt, pred = tiny_folders
    out = tmp_path / "cli.json"
    rc = main(["evaluate-simple", str(gt), str(pred), "-l", "1", "2", "-np", "1", "-o", str(out),
               "--surface_metrics", "--nsd_tolerance_mm", "1", "2"], env={}, cwd=tmp_path)
    assert rc == 0 and "evaluated 3 cases" in capsys.readouterr().out
    case = json.loads(out.read_text())["metric_per_case"][0]["metrics"]["1"]
    assert {"HD95", "NSD@1.0mm", "NSD@2.0mm", "Dice"} <= set(case)
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                              "numTraining": 3, "file_ending": ".nii.gz"}))
    assert main(["evaluate", str(gt), str(pred), "-djfile", str(dj), "-pfile", str(tmp_path / "missing_plans.json"),
                 "-np", "1"], env={}, cwd=tmp_path) == 1
    assert "missing_plans.json" in capsys.readouterr().err
    (gt / "extra.nii.gz").write_bytes((gt / "c0.nii.gz").read_bytes())
    assert main(["evaluate-simple", str(gt), str(pred), "-l", "1", "-np", "1"], env={}, cwd=tmp_path) == 1
    assert "extra.nii.gz" in capsys.readouterr().err
    assert main(["evaluate-simple", str(gt), str(pred), "-l", "1", "-np", "1", "--chill"], env={}, cwd=tmp_path) == 0
