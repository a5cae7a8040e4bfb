"""A tiny preprocessed dataset (written straight to the store) and plans with a small U-Net, for training tests.

A plain module (not conftest) so tests can import it by a unique name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnseg.plans.schema import Plans
from nnseg.preprocessed.class_locations import sample_class_locations
from nnseg.preprocessed.store import save_case
from nnseg.raw.dataset_json import DatasetSpec

SHAPE = (20, 20, 20)


def tiny_plans(patch: tuple[int, ...] = (16, 16, 16), batch_size: int = 2) -> Plans:
    dims = len(patch)
    conv = "torch.nn.modules.conv.Conv3d" if dims == 3 else "torch.nn.modules.conv.Conv2d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if dims == 3 else "torch.nn.modules.instancenorm.InstanceNorm2d"
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": conv,
                        "kernel_sizes": [[3] * dims] * 3, "strides": [[1] * dims, [2] * dims, [2] * dims],
                        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                        "norm_op": norm, "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    name = "3d_fullres" if dims == 3 else "2d"
    config = {"data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": batch_size, "patch_size": list(patch), "median_image_size_in_voxels": list(SHAPE[-dims:]),
              "spacing": [1.0] * dims, "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
              "architecture": arch, "batch_dice": False}
    return Plans.from_json({
        "dataset_name": "Dataset990_Tiny", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.0] * 3,
        "original_median_shape_after_transp": list(SHAPE), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {name: config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 3.0, "mean": 1.0, "median": 1.0, "min": -1.0,
                                                              "percentile_00_5": -1.0, "percentile_99_5": 3.0, "std": 1.0}}})


def tiny_spec() -> DatasetSpec:
    return DatasetSpec.from_json({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1},
                                  "numTraining": 6, "file_ending": ".nii.gz"})


def write_cases(folder: Path, n: int = 6, *, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(np.float32)
    ids = []
    for i in range(n):
        center = rng.uniform(7, 13, 3)
        radius = rng.uniform(3.5, 5.5)
        seg = (np.sqrt(((grid - center[:, None, None, None]) ** 2).sum(0)) < radius).astype(np.int16)[None]
        data = (seg * 2.0 + rng.normal(0, 0.6, seg.shape)).astype(np.float32)
        props = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": list(SHAPE), "bbox_used_for_cropping": [[0, s] for s in SHAPE],
                 "shape_after_cropping_and_before_resampling": list(SHAPE),
                 "class_locations": sample_class_locations(seg, [1])}
        ident = f"case_{i:03d}"
        save_case(folder, ident, data, seg, props, patch_size=(16, 16, 16))
        ids.append(ident)
    return ids
