"""Experiment planner rules on synthetic fingerprints, presets (ResEnc, torch resampling) and re-planning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnseg.networks import build_network, estimate_feature_map_size
from nnseg.plans.planner import PLANNERS, merge_existing_configurations, plan_experiment
from nnseg.plans.schema import load_plans, save_plans
from nnseg.plans.spacing import fullres_target_spacing, normalization_schemes, transpose_axes


def _fingerprint(spacing, shape, n=20, rel_size=1.0, channels=1) -> dict:
    props = {str(c): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                      "percentile_99_5": 1.0, "std": 1.0} for c in range(channels)}
    return {"foreground_intensity_properties_per_channel": props, "median_relative_size_after_cropping": rel_size,
            "shapes_after_crop": [list(shape)] * n, "spacings": [list(spacing)] * n}


def _dataset(n=20, channels=("CT",), labels=3) -> dict:
    return {"channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": {"background": 0, **{f"l{i}": i for i in range(1, labels)}}, "numTraining": n,
            "file_ending": ".nii.gz"}


def _plan(fp: dict, ds: dict, **kw):
    return plan_experiment(fp, ds, dataset_name="Dataset999_Test", image_reader_writer="SimpleITKIO", **kw)


@pytest.fixture(scope="module")
def big_plans():
    return _plan(_fingerprint([0.8, 0.8, 0.8], [400, 512, 512]), _dataset())


def test_large_images_create_lowres_and_cascade(big_plans) -> None:
    assert big_plans.available_configurations == ["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"]
    c = big_plans.configurations
    assert c["3d_cascade_fullres"] == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    assert list(c["3d_lowres"])[-2:] == ["batch_dice", "next_stage"]
    assert c["3d_lowres"]["next_stage"] == "3d_cascade_fullres" and c["3d_lowres"]["batch_dice"] is False
    assert c["3d_fullres"]["batch_dice"] is True and c["2d"]["batch_dice"] is True
    assert c["3d_lowres"]["data_identifier"] == "nnUNetPlans_3d_lowres"
    low, full = big_plans.configuration("3d_lowres"), big_plans.configuration("3d_fullres")
    # spacing grown in 3 % steps (isotropic here: all axes), the image at least halved, the patch >= 25 % of it
    steps = np.log(low.spacing[0] / 0.8) / np.log(1.03)
    assert abs(steps - round(steps)) < 1e-6 and np.allclose(low.spacing, low.spacing[0])
    assert np.prod(full.median_image_size_in_voxels) / np.prod(low.median_image_size_in_voxels) >= 2
    assert np.prod(low.patch_size) / np.prod(low.median_image_size_in_voxels) >= 0.25
    assert all(isinstance(v, int) for v in c["3d_lowres"]["median_image_size_in_voxels"])
    cascade = big_plans.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and cascade.patch_size == full.patch_size


def test_patch_shrinks_until_the_estimate_fits(big_plans) -> None:
    for name, ref, ref_bs in (("3d_fullres", 560e6, 2), ("2d", 85e6, 12)):
        cfg = big_plans.configuration(name)
        est = estimate_feature_map_size(cfg.architecture, cfg.patch_size, input_channels=1, num_classes=3)
        assert est / ref_bs * 2 <= ref
        n_voxels = 20 * 400 * 512 * 512  # the 3D median image, also for 2d
        cap = round(n_voxels * 0.05 / np.prod(cfg.patch_size))
        assert cfg.batch_size == max(2, min(round(ref / est * ref_bs), cap))
    assert big_plans.configuration("3d_fullres").patch_size != (256, 256, 256)


def test_small_dataset_has_no_lowres() -> None:
    plans = _plan(_fingerprint([1.0, 1.0, 1.0], [40, 50, 60]), _dataset())
    assert plans.available_configurations == ["2d", "3d_fullres"]
    assert plans.configurations["3d_fullres"]["batch_dice"] is False


def test_anisotropic_axis_is_transposed_first_and_uses_10th_percentile() -> None:
    spacings = [[0.7, 0.7, z] for z in np.linspace(4.0, 6.0, 11)]
    fp = {**_fingerprint([0.7, 0.7, 5.0], [300, 300, 30], n=11), "spacings": spacings}
    target = fullres_target_spacing(fp["spacings"], fp["shapes_after_crop"])
    assert np.allclose(target, [0.7, 0.7, np.percentile(np.linspace(4, 6, 11), 10)])
    plans = _plan(fp, _dataset(n=11))
    assert plans.transpose_forward == [2, 0, 1] and plans.transpose_backward == [1, 2, 0]
    assert plans.configuration("3d_fullres").spacing[0] == pytest.approx(4.2)
    assert plans.original_median_spacing_after_transp == pytest.approx([5.0, 0.7, 0.7])
    assert plans.configuration("2d").spacing == pytest.approx((0.7, 0.7))
    assert plans.configuration("3d_fullres").kernel_sizes[0] == [1, 3, 3]


def test_anisotropy_rule_keeps_target_above_other_axes() -> None:
    spacings = [[1.0, 1.0, 0.5]] * 3 + [[1.0, 1.0, 5.0]] * 8
    target = fullres_target_spacing(spacings, [[100, 100, 10]] * 11)
    assert target[2] == pytest.approx(1.0 + 1e-5)
    assert transpose_axes([1.0, 1.0, 1.0 + 1e-5]) == ([2, 0, 1], [1, 2, 0])
    assert transpose_axes([3.0, 1.0, 1.0], suppress=True) == ([0, 1, 2], [0, 1, 2])
    assert np.allclose(fullres_target_spacing(spacings, [[1, 1, 1]] * 11, overwrite=[2, 2, 2]), [2, 2, 2])


def test_normalization_from_channel_names() -> None:
    names = {"0": "CT", "1": "noNorm", "2": "T2", "3": "zscore", "4": "rescale_to_0_1", "5": "RGB_to_0_1"}
    schemes, mask = normalization_schemes(names, 0.5)
    assert schemes == ["CTNormalization", "NoNormalization", "ZScoreNormalization", "ZScoreNormalization",
                       "RescaleTo01Normalization", "RGBTo01Normalization"]
    assert mask == [False, False, True, True, False, False]
    assert normalization_schemes(names, 0.8)[1] == [False] * 6


@pytest.mark.parametrize(("planner", "plans_name", "target", "no_cap"), [
    ("ResEncUNetPlanner", "nnUNetResEncUNetPlans", 8, False),
    ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans", 8, True),
    ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans", 24, True),
    ("nnUNetPlannerResEncXL", "nnUNetResEncUNetXLPlans", 40, True),
])
def test_resenc_presets_on_hippocampus(expected_dir: Path, tmp_path: Path, planner: str, plans_name: str,
                                       target: int, no_cap: bool) -> None:
    d = expected_dir / "Dataset004_Hippocampus"
    fp, ds = json.loads((d / "dataset_fingerprint.json").read_text()), json.loads((d / "dataset.json").read_text())
    plans = plan_experiment(fp, ds, dataset_name=d.name, image_reader_writer="SimpleITKIO", planner=planner)
    assert plans.plans_name == plans_name and plans.experiment_planner_used == planner
    assert PLANNERS[planner].gpu_memory_target_gb == target
    save_plans(plans, tmp_path / f"{plans_name}.json")
    loaded = load_plans(tmp_path / f"{plans_name}.json")
    assert loaded.to_json() == plans.to_json()
    for name in ("2d", "3d_fullres"):
        cfg = loaded.configuration(name)
        assert cfg.data_identifier == f"nnUNetPlans_{name}"
        assert cfg.network_class_name == "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        kw = cfg.arch_kwargs
        assert kw["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6][:kw["n_stages"]] and "n_conv_per_stage" not in kw
        assert kw["n_conv_per_stage_decoder"] == [1] * (kw["n_stages"] - 1)
        assert (cfg.batch_size > 7 if name == "3d_fullres" else cfg.batch_size > 281) == no_cap
    net = build_network(loaded.configuration("3d_fullres").architecture, input_channels=1, num_classes=3)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_resenc_loop_condition_has_no_batch_scaling() -> None:
    fp, ds = _fingerprint([1.0, 1.0], [1, 2048, 2048], n=200), _dataset(n=200)
    fp["spacings"] = [[999.0, 1.0, 1.0]] * 200
    default = _plan(fp, ds).configuration("2d")
    resenc = _plan(fp, ds, planner="ResEncUNetPlanner").configuration("2d")
    est = estimate_feature_map_size(resenc.architecture, resenc.patch_size, input_channels=1, num_classes=3)
    assert est <= 135e6
    est = estimate_feature_map_size(default.architecture, default.patch_size, input_channels=1, num_classes=3)
    assert est / 12 * 2 <= 85e6
    assert default.patch_size != (2048, 2048)


def test_gpu_target_scales_reference_and_warns_for_fixed_presets() -> None:
    fp, ds = _fingerprint([1.0, 1.0, 1.0], [40, 50, 60], n=5000), _dataset(n=5000)
    kw = {"dataset_name": "Dataset999_Test", "image_reader_writer": "SimpleITKIO", "planner": "nnUNetPlannerResEncM"}
    base = plan_experiment(fp, ds, **kw).configuration("3d_fullres").batch_size
    with pytest.warns(UserWarning, match="meant for 8 GB, got 80 GB"):
        big = plan_experiment(fp, ds, gpu_memory_target_gb=80, overwrite_plans_name="nnUNetResEncUNetPlans_80G", **kw)
    assert big.plans_name == "nnUNetResEncUNetPlans_80G"
    assert abs(big.configuration("3d_fullres").batch_size / base - 10) < 0.2


def test_torch_resampling_presets() -> None:
    fp, ds = _fingerprint([1.0, 1.0, 1.0], [40, 50, 60]), _dataset()
    plans = _plan(fp, ds, planner="nnUNetPlanner_torchres")
    cfg = plans.configuration("3d_fullres")
    assert plans.plans_name == "nnUNetPlans_torchres" and cfg.data_identifier == "nnUNetPlans_torchres_3d_fullres"
    assert cfg.resampling_fn_data == cfg.resampling_fn_seg == cfg.resampling_fn_probabilities \
        == "resample_torch_fornnunet"
    assert cfg.resampling_fn_seg_kwargs == {"is_seg": True, "force_separate_z": False,
                                            "memefficient_seg_resampling": False}
    assert cfg.resampling_fn_probabilities_kwargs["is_seg"] is False
    resl = _plan(fp, ds, planner="nnUNetPlannerResEncL_torchres").configuration("2d")
    assert resl.data_identifier == "nnUNetResEncUNetLPlans_torchres_2d"
    assert resl.resampling_fn_data == "resample_torch_fornnunet"


def test_overwrites_and_unknown_planner() -> None:
    fp, ds = _fingerprint([1.0, 1.0, 1.0], [40, 50, 60]), _dataset(channels=("T1", "T2"))
    fp["foreground_intensity_properties_per_channel"]["1"] = {"std": 1.0, "mean": 0.0}
    plans = _plan(fp, ds, overwrite_target_spacing=[2.0, 2.0, 2.0], overwrite_plans_name="myPlans",
                  preprocessor_name="MyPreprocessor")
    cfg = plans.configuration("3d_fullres")
    assert cfg.spacing == (2.0, 2.0, 2.0) and cfg.median_image_size_in_voxels == (20.0, 25.0, 30.0)
    assert cfg.data_identifier == "myPlans_3d_fullres" and cfg.preprocessor_name == "MyPreprocessor"
    assert cfg.normalization_schemes == ("ZScoreNormalization", "ZScoreNormalization")
    assert list(plans.foreground_intensity_properties_per_channel["1"]) == ["mean", "std"]
    with pytest.raises(KeyError, match="nnUNetPlannerResEncL"):
        _plan(fp, ds, planner="NoSuchPlanner")
    with pytest.raises(ValueError, match="lacks \\['spacings'\\]"):
        _plan({k: v for k, v in fp.items() if k != "spacings"}, ds)


def test_replanning_keeps_user_configurations() -> None:
    fp, ds = _fingerprint([1.0, 1.0, 1.0], [40, 50, 60]), _dataset()
    new = _plan(fp, ds)
    old = new.to_json()
    old["configurations"]["3d_fullres_bs16"] = {"inherits_from": "3d_fullres", "batch_size": 16}
    old["configurations"]["3d_fullres"]["batch_size"] = 99
    merged = merge_existing_configurations(new, old)
    assert merged.available_configurations == ["2d", "3d_fullres", "3d_fullres_bs16"]
    assert merged.configuration("3d_fullres").batch_size == new.configuration("3d_fullres").batch_size
    assert merged.configuration("3d_fullres_bs16").batch_size == 16
    assert merge_existing_configurations(new, None) is new
