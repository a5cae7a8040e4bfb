"""Cropping to the non-zero region, normalisation schemes and foreground class locations on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from nnseg.preprocessed.class_locations import class_location_key, classes_to_collect, sample_class_locations
from nnseg.preprocessed.normalize import NORMALIZERS, normalize
from nnseg.raw.crop import bbox_from_mask, bbox_to_slices, create_nonzero_mask, crop_to_nonzero, nonzero_mask_in_bbox


def _ring_image() -> np.ndarray:
    """(2, 6, 7, 5): a hollow box in channel 0 (the hole must be filled), one extra voxel in channel 1."""
    data = np.zeros((2, 6, 7, 5), dtype=np.float32)
    data[0, 1:4, 2:6, 1:4] = 5.0
    data[0, 2, 3:5, 2] = 0.0  # interior hole
    data[1, 4, 2, 2] = 1.0
    return data


def test_crop_bbox_fill_holes_and_seg_marking() -> None:
    data = _ring_image()
    seg = np.zeros((1, 6, 7, 5), dtype=np.int16)
    seg[0, 1, 2, 1] = 2
    seg[0, 4, 5, 3] = 1  # a label outside the non-zero mask keeps its value
    cropped, seg_c, bbox = crop_to_nonzero(data, seg.copy())
    assert bbox == [[1, 5], [2, 6], [1, 4]]
    assert cropped.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(cropped, data[:, 1:5, 2:6, 1:4])
    # the filled hole counts as inside: seg stays 0 there
    assert seg_c[0, 1, 1, 1] == 0
    # outside the mask (row x=4 except the channel-1 voxel) background becomes -1, labels stay
    assert seg_c[0, 3, 1, 1] == -1
    assert seg_c[0, 3, 0, 1] == 0
    assert seg_c[0, 3, 3, 2] == 1
    assert seg_c[0, 0, 0, 0] == 2


def test_mask_filled_inside_bbox_equals_full_fill(rng: np.random.Generator) -> None:
    for _ in range(20):
        data = np.zeros((2, 12, 11, 10), dtype=np.float32)
        data[0, 2:10, 1:9, 3:9] = rng.random((8, 8, 6)) > 0.35  # holes, some touching the box faces
        data[1, 5, 10, 0] = 1.0
        full = create_nonzero_mask(data)
        mask, bbox = nonzero_mask_in_bbox(data)
        assert bbox == bbox_from_mask(full)
        np.testing.assert_array_equal(mask, full[bbox_to_slices(bbox)])


def test_crop_without_seg_gives_int8_mask() -> None:
    _, seg, _ = crop_to_nonzero(_ring_image())
    assert seg.dtype == np.int8
    assert set(np.unique(seg)) == {-1, 0}
    assert (seg == 0).sum() == 3 * 4 * 3 + 1


def test_crop_empty_image_keeps_full_extent() -> None:
    data = np.zeros((1, 3, 4, 2), dtype=np.float32)
    cropped, seg, bbox = crop_to_nonzero(data)
    assert bbox == [[0, 3], [0, 4], [0, 2]]
    assert cropped.shape == data.shape
    assert (seg == -1).all()
    assert bbox_from_mask(np.zeros((2, 2), bool)) == [[0, 2], [0, 2]]


def test_crop_rejects_mismatched_seg() -> None:
    with pytest.raises(ValueError, match="differ"):
        crop_to_nonzero(np.ones((1, 3, 3, 3)), np.zeros((1, 3, 3, 2)))
    with pytest.raises(ValueError, match="shape"):
        crop_to_nonzero(np.ones((3, 3)))


def test_registry_has_nnunet_names() -> None:
    assert {"CTNormalization", "ZScoreNormalization", "RescaleTo01Normalization", "RGBTo01Normalization",
            "NoNormalization"} <= set(NORMALIZERS.names())


def test_zscore_plain_and_masked(rng: np.random.Generator) -> None:
    img = rng.normal(10, 3, (4, 5, 6)).astype(np.float32)
    out = NORMALIZERS["ZScoreNormalization"](img.copy(), None, use_mask_for_norm=False, intensity_properties=None)
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5
    seg = np.zeros((1, 4, 5, 6), dtype=np.int8)
    seg[0, :2] = -1
    img[:2] = 0.0
    out = NORMALIZERS["ZScoreNormalization"](img.copy(), seg[0], use_mask_for_norm=True, intensity_properties=None)
    assert (out[:2] == 0).all()
    inside = img[2:]
    np.testing.assert_allclose(out[2:], (inside - inside.mean()) / inside.std(), atol=1e-5)
    with pytest.raises(ValueError, match="segmentation"):
        NORMALIZERS["ZScoreNormalization"](img, None, use_mask_for_norm=True, intensity_properties=None)


def test_ct_rescale_rgb_none() -> None:
    img = np.array([[[-2000.0, 0.0, 40.0, 3000.0]]], dtype=np.float32)
    props = {"mean": 40.0, "std": 20.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}
    out = NORMALIZERS["CTNormalization"](img.copy(), None, use_mask_for_norm=False, intensity_properties=props)
    np.testing.assert_allclose(out.ravel(), [-7.0, -2.0, 0.0, 8.0])
    with pytest.raises(ValueError, match="intensity properties"):
        NORMALIZERS["CTNormalization"](img, None, use_mask_for_norm=False, intensity_properties=None)
    out = NORMALIZERS["RescaleTo01Normalization"](img.copy(), None, use_mask_for_norm=False, intensity_properties=None)
    assert out.min() == 0.0 and out.max() == 1.0
    rgb = np.array([[[0, 51, 255]]], dtype=np.uint8)
    out = NORMALIZERS["RGBTo01Normalization"](rgb, None, use_mask_for_norm=False, intensity_properties=None)
    np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        NORMALIZERS["RGBTo01Normalization"](img, None, use_mask_for_norm=False, intensity_properties=None)
    ints = np.array([[[1, 2]]], dtype=np.int16)
    out = NORMALIZERS["NoNormalization"](ints, None, use_mask_for_norm=False, intensity_properties=None)
    assert out.dtype == np.float32 and out.ravel().tolist() == [1.0, 2.0]


def test_normalize_per_channel_and_channel_count_check(rng: np.random.Generator) -> None:
    data = rng.normal(5, 2, (2, 3, 4, 5)).astype(np.float32)
    props = {"1": {"mean": 5.0, "std": 2.0, "percentile_00_5": 0.0, "percentile_99_5": 10.0}}
    out = normalize(data.copy(), None, schemes=["NoNormalization", "CTNormalization"], use_mask_for_norm=[False, False],
                    intensity_properties=props)
    np.testing.assert_array_equal(out[0], data[0])
    np.testing.assert_allclose(out[1], (np.clip(data[1], 0, 10) - 5) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="2 channels"):
        normalize(data, None, schemes=["ZScoreNormalization"], use_mask_for_norm=[False])
    with pytest.raises(KeyError, match="FancyNorm"):
        normalize(data, None, schemes=["FancyNorm", "NoNormalization"], use_mask_for_norm=[False, False])


def test_class_locations_counts_membership_and_seed(rng: np.random.Generator) -> None:
    seg = np.zeros((1, 60, 50, 40), dtype=np.int8)
    seg[0, :40] = 1  # 80 000 voxels: capped at 10 000
    seg[0, 50:52, :10, :10] = 2  # 200 voxels: all of them
    seg[0, 59, 0, :3] = -1
    locs = sample_class_locations(seg, [1, 2, 3, (1, 2)])
    assert len(locs["1"]) == 10_000 and len(locs["2"]) == 200 and locs["3"] == []
    assert len(locs["(1, 2)"]) == 10_000
    for key, want in (("1", {1}), ("2", {2}), ("(1, 2)", {1, 2})):
        coords = np.array(locs[key])
        assert (coords[:, 0] == 0).all()
        assert set(np.unique(seg[tuple(coords.T)])) <= want
        assert len({tuple(c) for c in locs[key]}) == len(locs[key])  # without replacement
    # same numbers as nnU-Net's RandomState(1234) draws over argwhere order
    fg = np.argwhere(seg != 0)
    vals = seg[seg != 0]
    rs = np.random.RandomState(1234)
    expect1 = fg[vals == 1][rs.choice(int((vals == 1).sum()), 10_000, replace=False)]
    np.testing.assert_array_equal(np.array(locs["1"]), expect1)


def test_class_locations_min_coverage_above_cap() -> None:
    seg = np.ones((1, 110, 100, 100), dtype=np.int8)  # 1.1e6 voxels: 1% = 11 000 > 10 000
    assert len(sample_class_locations(seg, [1])["1"]) == 11_000


def test_classes_to_collect_and_keys() -> None:
    assert classes_to_collect([1, 2]) == [1, 2]
    assert classes_to_collect([1, 2, 3], regions=[[1, 2, 3], [2, 3], 3]) == [(1, 2, 3), (2, 3), 3]
    assert classes_to_collect([1, 2], ignore_label=3, all_labels=[0, 1, 2]) == [1, 2, (-1, 0, 1, 2)]
    assert class_location_key(2) == "2" and class_location_key((1, 2)) == "(1, 2)"


def _plans(transpose: list[int], spacing_3d: list[float], *, schemes: list[str], mask: list[bool]):
    from nnseg.plans.schema import Plans

    def cfg(name: str, spacing: list[float]) -> dict:
        return {
            "data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [8] * len(spacing), "median_image_size_in_voxels": [8.0] * len(spacing), "spacing": spacing,
            "normalization_schemes": schemes, "use_mask_for_norm": mask,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {}, "batch_dice": False,
        }

    return Plans.from_json({
        "dataset_name": "Dataset999_T", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": spacing_3d,
        "original_median_shape_after_transp": [8, 8, 8], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": transpose, "transpose_backward": [int(i) for i in np.argsort(transpose)],
        "configurations": {"2d": cfg("2d", spacing_3d[1:]), "3d_fullres": cfg("3d_fullres", spacing_3d)},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0, "std": 2.0, "percentile_00_5": 0.0, "percentile_99_5": 9.0}},
    })


def _spec(labels: dict, regions_class_order=None):
    from nnseg.raw.dataset_json import DatasetSpec

    d = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    if regions_class_order is not None:
        d["regions_class_order"] = regions_class_order
    return DatasetSpec.from_json(d)


def test_preprocess_case_transpose_2d_spacing_regions_and_ignore(rng: np.random.Generator) -> None:
    from nnseg.preprocessed.preprocess import preprocess_case

    data = np.zeros((1, 10, 12, 6), dtype=np.float32)
    data[0, 1:9, 2:12, :] = rng.uniform(1, 5, (8, 10, 6))
    seg = np.zeros((1, 10, 12, 6), dtype=np.float32)
    seg[0, 3:6, 4:8, 1:4] = 1
    seg[0, 4:5, 5:7, 2:3] = 2
    seg[0, 7, 3:5, :] = 3  # ignore label
    props = {"spacing": [1.0, 2.0, 4.0], "sitk_stuff": {"spacing": (4.0, 2.0, 1.0)}}
    plans = _plans([2, 0, 1], [4.0, 1.0, 1.0], schemes=["CTNormalization"], mask=[False])
    spec = _spec({"background": 0, "a": [1, 2], "b": 2, "ignore": 3}, regions_class_order=[1, 2])
    out, s, p = preprocess_case(data, seg, props, plans=plans, configuration=plans.configuration("2d"), spec=spec)
    # transposed (Z, X, Y) = (6, 8, 10) after crop; 2D keeps the case's own axis-0 spacing (4), resamples 2 -> 1 on Y
    assert p["shape_before_cropping"] == [6, 10, 12]
    assert p["bbox_used_for_cropping"] == [[0, 6], [1, 9], [2, 12]]
    assert p["shape_after_cropping_and_before_resampling"] == [6, 8, 10]
    assert out.shape == (1, 6, 8, 20) and s.shape == (1, 6, 8, 20) and s.dtype == np.int8
    assert p["spacing"] == [1.0, 2.0, 4.0] and p["sitk_stuff"] == props["sitk_stuff"]
    assert set(p["class_locations"]) == {"(1, 2)", "2", "(-1, 0, 1, 2)"}
    for key, allowed in (("(1, 2)", {1, 2}), ("2", {2})):
        coords = np.array(p["class_locations"][key])
        assert set(np.unique(s[tuple(coords.T)])) <= allowed
    assert out.min() >= (0 - 1.0) / 2.0 and out.max() <= (9 - 1.0) / 2.0 + 1e-6
    np.testing.assert_array_equal(seg[0, 7, 3:5], 3)  # inputs untouched
    assert "class_locations" not in props


def test_preprocess_case_mask_norm_and_int16_labels(rng: np.random.Generator) -> None:
    from nnseg.preprocessed.preprocess import preprocess_case

    data = np.zeros((1, 8, 8, 8), dtype=np.float32)
    data[0, :, 2:6, 2:6] = rng.normal(100, 5, (8, 4, 4))
    data[0, :, 2, 2] = 0.0  # a corner of the box outside the non-zero mask: -1 in seg, left at 0 by the norm
    seg = np.zeros((1, 8, 8, 8), dtype=np.int16)
    seg[0, 3:5, 3:5, 3:5] = 200
    plans = _plans([0, 1, 2], [1.0, 1.0, 1.0], schemes=["ZScoreNormalization"], mask=[True])
    spec = _spec({"background": 0, **{f"l{i}": i for i in range(1, 201)}})
    out, s, p = preprocess_case(data, seg, {"spacing": [1.0, 1.0, 1.0]}, plans=plans,
                                configuration=plans.configuration("3d_fullres"), spec=spec)
    assert s.dtype == np.int16 and s.max() == 200
    outside = s[0] == -1
    assert outside.sum() == 8 and (out[0][outside] == 0).all()
    inside = out[0][~outside]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4
    assert len(p["class_locations"]["200"]) == 8 and p["class_locations"]["1"] == []


def test_preprocess_case_with_torchres_plans(rng: np.random.Generator) -> None:
    import dataclasses

    from nnseg.preprocessed.preprocess import preprocess_case

    plans = _plans([0, 1, 2], [1.0, 0.5, 0.5], schemes=["ZScoreNormalization"], mask=[False])
    torch_kwargs = {"is_seg": False, "force_separate_z": False, "memefficient_seg_resampling": False}
    cfg = dataclasses.replace(plans.configuration("3d_fullres"), resampling_fn_data="resample_torch_fornnunet",
                              resampling_fn_data_kwargs=torch_kwargs, resampling_fn_seg="resample_torch_fornnunet",
                              resampling_fn_seg_kwargs={**torch_kwargs, "is_seg": True})
    data = rng.uniform(1, 2, (1, 6, 8, 8)).astype(np.float32)
    seg = np.zeros((1, 6, 8, 8), dtype=np.uint8)
    seg[0, 2:4, 2:6, 2:6] = 1
    out, s, p = preprocess_case(data, seg, {"spacing": [1.0, 1.0, 1.0]}, plans=plans, configuration=cfg,
                                spec=_spec({"background": 0, "x": 1}))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1, 6, 16, 16)
    assert s.dtype == np.int8 and (s == 1).sum() == 2 * 8 * 8
    assert len(p["class_locations"]["1"]) == 128
