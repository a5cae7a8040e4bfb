"""Logits -> files: resampling, cropping, transposition, regions, and the nnU-Net-compatible .npz/.pkl."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnseg._types import Geometry
from nnseg.plans.schema import Plans
from nnseg.predictions.export.from_logits import (
    convert_logits,
    export_prediction,
    probabilities_to_segmentation,
    resample_logits,
)
from nnseg.predictions.export.predict_io import (
    load_probabilities_npz,
    load_properties_pkl,
    properties_for_pickle,
)
from nnseg.preprocessed.resample import resample_data_or_seg_to_shape
from nnseg.raw.dataset_json import DatasetSpec

SPEC = DatasetSpec.from_json({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                              "numTraining": 1, "file_ending": ".nii.gz"})


@pytest.fixture
def plans(expected_dir: Path) -> Plans:
    import json

    return Plans.from_json(json.loads((expected_dir / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text()))


@pytest.mark.parametrize("spacing_in,spacing_out,shape_in,shape_out", [
    ((1.0, 1.0, 1.0), (0.7, 1.3, 1.1), (9, 11, 8), (13, 8, 10)),   # isotropic: trilinear
    ((4.0, 1.0, 1.0), (1.0, 1.0, 1.0), (5, 11, 8), (19, 15, 6)),   # anisotropic: separate z, nearest along axis 0
    ((1.0, 1.0, 5.0), (1.0, 1.0, 1.0), (9, 7, 4), (9, 10, 17)),    # low-res axis last
])
def test_torch_resampling_matches_numpy(rng, spacing_in, spacing_out, shape_in, shape_out) -> None:
    data = rng.normal(size=(3, *shape_in)).astype(np.float32)
    expected = resample_data_or_seg_to_shape(data, shape_out, spacing_in, spacing_out, is_seg=False, order=1, order_z=0)
    got = resample_logits(torch.from_numpy(data), shape_out, spacing_in, spacing_out, order=1, order_z=0).numpy()
    assert got.shape == (3, *shape_out)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_same_shape_is_not_resampled() -> None:
    x = torch.ones(2, 3, 4, 5)
    assert resample_logits(x, (3, 4, 5), (1, 1, 1), (2, 2, 2)) is x


def _properties(shape_before, bbox, spacing=(1.0, 1.0, 1.0)):
    return {"sitk_stuff": {"spacing": tuple(spacing[::-1]), "origin": (0.0, 0.0, 0.0), "direction": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)},
            "spacing": list(spacing), "shape_before_cropping": shape_before, "bbox_used_for_cropping": bbox,
            "shape_after_cropping_and_before_resampling": tuple(hi - lo for lo, hi in bbox),
            "class_locations": {1: np.zeros((0, 4))}}


def test_convert_logits_reverts_cropping_and_transpose(plans: Plans) -> None:
    # transposed array axes (t0, t1, t2) = original axes (2, 0, 1)
    plans = dataclasses.replace(plans, transpose_forward=[2, 0, 1], transpose_backward=[1, 2, 0])
    cfg = plans.configuration("3d_fullres")
    shape_orig = (6, 7, 8)
    bbox_orig = [[1, 5], [2, 7], [0, 8]]
    bbox_t = [bbox_orig[i] for i in plans.transpose_forward]
    shape_t = tuple(shape_orig[i] for i in plans.transpose_forward)
    props = _properties(shape_t, bbox_t)
    crop_shape = tuple(hi - lo for lo, hi in bbox_t)
    logits = torch.zeros(3, *crop_shape)
    logits[2, 0] = 5.0  # first transposed slice = original axis 2 index bbox lo -> label 2
    logits[1, 1:] = 5.0
    seg, probs = convert_logits(logits, props, plans=plans, configuration=cfg, spec=SPEC, return_probabilities=True)
    assert seg.shape == shape_orig and seg.dtype == np.uint8
    assert probs.shape == (3, *shape_orig) and probs.dtype == np.float32
    inside = np.zeros(shape_orig, bool)
    inside[1:5, 2:7, 0:8] = True
    assert (seg[~inside] == 0).all() and (probs[0][~inside] == 1).all() and (probs[1:, ~inside] == 0).all()
    assert (seg[1:5, 2:7, 0] == 2).all() and (seg[1:5, 2:7, 1:] == 1).all()
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-6)


def test_regions_are_painted_in_class_order() -> None:
    spec = DatasetSpec.from_json({"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2], "core": 2},
                                  "regions_class_order": [1, 2], "numTraining": 1, "file_ending": ".nii.gz"})
    probs = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.8]])
    assert probabilities_to_segmentation(probs, spec).tolist() == [1, 2, 2]


def test_export_writes_files_like_nnunet(plans: Plans, tmp_path: Path, rng) -> None:
    cfg = plans.configuration("3d_fullres")
    props = _properties((5, 6, 7), [[1, 4], [0, 6], [2, 7]], spacing=(1.0, 1.0, 1.0))
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), reader="SimpleITKIO", origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), sitk_spacing=(1.0, 1.0, 1.0))
    logits = torch.from_numpy(rng.normal(size=(3, 3, 6, 5)).astype(np.float32))
    export_prediction(logits, props, tmp_path / "case_1", plans=plans, configuration=cfg, spec=SPEC,
                      save_probabilities=True, geometry=geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_1.nii.gz", "case_1.npz", "case_1.pkl"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case_1.nii.gz")))
    probs = load_probabilities_npz(tmp_path / "case_1.npz")
    np.testing.assert_array_equal(seg, probs.argmax(0))
    pkl = load_properties_pkl(tmp_path / "case_1.pkl")
    assert "class_locations" not in pkl
    assert list(pkl) == ["sitk_stuff", "spacing", "shape_before_cropping", "bbox_used_for_cropping",
                         "shape_after_cropping_and_before_resampling"]


def test_properties_pickle_matches_nnunet(expected_dir: Path) -> None:
    golden = expected_dir / "Dataset004_Hippocampus" / "model" / "predictions_tta" / "hippocampus_020.pkl"
    props = load_properties_pkl(golden)
    ours = properties_for_pickle({**props, "class_locations": {}})
    assert pickle.dumps(ours, protocol=4) == golden.read_bytes()


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    path = tmp_path / "case.pkl"
    path.write_bytes(pickle.dumps({"spacing": [1.0], "x": Evil()}))
    with pytest.raises(ValueError, match="builtins.print"):
        load_properties_pkl(path)
    arrays = tmp_path / "ok.pkl"
    arrays.write_bytes(pickle.dumps({"a": np.arange(3), "s": np.float32(2), "d": np.dtype("int16")}))
    loaded = load_properties_pkl(arrays)
    assert loaded["a"].tolist() == [0, 1, 2] and loaded["s"] == 2 and loaded["d"] == np.int16


def test_ensemble_refuses_mismatched_folders(tmp_path: Path) -> None:
    from nnseg.predictions.export.from_logits import ensemble_folders

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, cases in ((a, ("x", "y")), (b, ("x",))):
        folder.mkdir()
        for case in cases:
            np.savez(folder / f"{case}.npz", probabilities=np.zeros((2, 1, 1, 1), np.float32))
    with pytest.raises(ValueError, match="at least two"):
        ensemble_folders([a], tmp_path / "out")
    with pytest.raises(ValueError, match="different cases.*'y'"):
        ensemble_folders([a, b], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ensemble_folders([a, tmp_path / "missing"], tmp_path / "out")


@pytest.mark.parametrize("planner_resampling", ["default", "torch"])
def test_probabilities_follow_the_plans_resampling_function(plans: Plans, planner_resampling: str) -> None:
    """Export resamples with the function the plans name (``*_torchres`` plans name resample_torch_fornnunet)."""
    from nnseg.plans.presets import DEFAULT_RESAMPLING, TORCH_RESAMPLING
    from nnseg.predictions.export.from_logits import resample_probabilities
    from nnseg.preprocessed.resample_torch import resample_torch_fornnunet

    cfg = plans.configuration("3d_fullres")
    table = TORCH_RESAMPLING if planner_resampling == "torch" else DEFAULT_RESAMPLING
    cfg = dataclasses.replace(cfg, resampling_fn_probabilities=table["resampling_fn_probabilities"],
                              resampling_fn_probabilities_kwargs=dict(table["resampling_fn_probabilities_kwargs"]))
    logits = torch.rand(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    got = resample_probabilities(logits, (8, 10, 12), (1, 1, 1), (0.5, 0.5, 0.5), configuration=cfg)
    if planner_resampling == "torch":
        kwargs = {k: v for k, v in table["resampling_fn_probabilities_kwargs"].items() if k != "is_seg"}
        want = resample_torch_fornnunet(logits, (8, 10, 12), (1, 1, 1), (0.5, 0.5, 0.5), is_seg=False, **kwargs)
    else:
        want = torch.from_numpy(resample_data_or_seg_to_shape(logits.numpy(), (8, 10, 12), (1, 1, 1), (0.5, 0.5, 0.5),
                                                               order=1, order_z=0))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_inplace_softmax_of_a_large_array_overwrites_it_and_keeps_the_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above INPLACE_NONLIN_BYTES the softmax runs block by block into its input (no second array of its size)."""
    import nnseg.predictions.export.from_logits as export

    monkeypatch.setattr(export, "INPLACE_NONLIN_BYTES", 4 * 3 * 1000)
    monkeypatch.setattr(export, "_SOFTMAX_BLOCK", 3 * 97)  # many blocks, the last one partial
    torch.manual_seed(0)
    logits = torch.randn(3, 20, 11, 13) * 4
    expected = torch.softmax(logits, dim=0)
    work = logits.clone()
    probs = export.apply_inference_nonlin(work, SPEC, inplace=True)
    assert probs.data_ptr() == work.data_ptr()
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    assert torch.equal(torch.argmax(probs, 0), torch.argmax(expected, 0))
    small = logits[:, :2].clone()  # below the threshold: a new array, bitwise the one-call softmax
    out = export.apply_inference_nonlin(small, SPEC, inplace=True)
    assert out.data_ptr() != small.data_ptr() and torch.equal(out, torch.softmax(small, dim=0))
    assert torch.equal(export.apply_inference_nonlin(logits, SPEC), expected) and torch.equal(work, probs)
