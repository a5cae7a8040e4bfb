"""Planner presets: nnU-Net's experiment planner classes as data (one frozen dataclass each, in a registry).

nnU-Net selects a planner class with ``-pl``; every shipped class only changes constants (network class, encoder
blocks, VRAM reference values, GPU target, 5 % cap, loop condition, resampling functions, data identifiers). nnseg
keeps those constants in :class:`PlannerPreset` and registers one preset per nnU-Net class name in :data:`PLANNERS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from nnseg.registry import Registry

__all__ = ["PLANNERS", "PlannerPreset", "DEFAULT_RESAMPLING", "TORCH_RESAMPLING"]

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def _resampling(fn: str, data: dict[str, Any], seg: dict[str, Any], prob: dict[str, Any]) -> dict[str, Any]:
    return {
        "resampling_fn_data": fn, "resampling_fn_seg": fn,
        "resampling_fn_data_kwargs": data, "resampling_fn_seg_kwargs": seg,
        "resampling_fn_probabilities": fn, "resampling_fn_probabilities_kwargs": prob,
    }


DEFAULT_RESAMPLING = _resampling(
    "resample_data_or_seg_to_shape",
    {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
)
"""scipy/numpy resampling: cubic data, linear seg (one-hot) and probabilities, separate-z decided per case."""

_TORCH_KW = {"force_separate_z": False, "memefficient_seg_resampling": False}
TORCH_RESAMPLING = _resampling(
    "resample_torch_fornnunet",
    {"is_seg": False, **_TORCH_KW}, {"is_seg": True, **_TORCH_KW}, {"is_seg": False, **_TORCH_KW},
)
"""torch resampling (``nnUNetPlanner_torchres``, ``nnUNetPlannerResEncL_torchres``): never separate z."""

_SEPZ_KW = {"force_separate_z": None, "memefficient_seg_resampling": False, "separate_z_anisotropy_threshold": 3}
TORCH_RESAMPLING_SEPZ = _resampling(
    "resample_torch_fornnunet",
    {"is_seg": False, **_SEPZ_KW}, {"is_seg": True, **_SEPZ_KW}, {"is_seg": False, **_SEPZ_KW},
)
"""torch resampling with nnU-Net's separate-z rule (``nnUNetPlannerResEncL_torchres_sepz``)."""


@dataclass(frozen=True)
class PlannerPreset:
    """The constants of one nnU-Net planner class.

    Attributes:
        name: nnU-Net's class name (written to ``experiment_planner_used``).
        plans_name: default plans identifier (``-p``).
        network_class_name: dotted network class name written to the plans.
        encoder_key: ``n_conv_per_stage`` (PlainConvUNet) or ``n_blocks_per_stage`` (ResidualEncoderUNet).
        encoder_blocks / decoder_convs: per-stage counts (truncated to the number of stages).
        gpu_memory_target_gb: default GPU memory target.
        reference_gb: the GPU memory the reference values correspond to.
        reference_3d / reference_2d: feature-map-size budget at ``reference_gb``.
        ref_bs_3d / ref_bs_2d: batch sizes the reference values were measured with.
        loop_scales_by_ref_bs: True: shrink the patch while ``estimate / ref_bs * 2 > reference`` (default planner);
            False: while ``estimate > reference`` (ResEnc planners).
        max_dataset_covered: batch-size cap as a fraction of the dataset's voxels (1 = no cap).
        shares_default_data: 2d/3d_fullres reuse ``nnUNetPlans_2d``/``nnUNetPlans_3d_fullres`` preprocessed data.
        resampling: the six ``resampling_fn_*`` plans entries.
        warn_other_gpu_target: warn when planned for another GPU target than the default (ResEnc M/L/XL).
    """

    name: str
    plans_name: str
    network_class_name: str = PLAIN_UNET
    encoder_key: str = "n_conv_per_stage"
    encoder_blocks: tuple[int, ...] = (2,) * 13
    decoder_convs: tuple[int, ...] = (2,) * 13
    gpu_memory_target_gb: float = 8.0
    reference_gb: float = 8.0
    reference_3d: float = 560_000_000
    reference_2d: float = 85_000_000
    ref_bs_3d: int = 2
    ref_bs_2d: int = 12
    loop_scales_by_ref_bs: bool = True
    max_dataset_covered: float = 0.05
    shares_default_data: bool = False
    resampling: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESAMPLING))
    base_num_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    min_feature_map_size: int = 4
    min_batch_size: int = 2
    lowres_creation_threshold: float = 0.25
    warn_other_gpu_target: bool = False

    def data_identifier(self, plans_name: str, configuration: str) -> str:
        """Name of the preprocessed-data folder of ``configuration`` under ``plans_name``."""
        if self.shares_default_data and configuration in ("2d", "3d_fullres"):
            return f"nnUNetPlans_{configuration}"
        return f"{plans_name}_{configuration}"


PLANNERS: Registry[PlannerPreset] = Registry("experiment planner")


def _register(preset: PlannerPreset) -> PlannerPreset:
    PLANNERS.add(preset.name, preset)
    return preset


DEFAULT = _register(PlannerPreset("ExperimentPlanner", "nnUNetPlans"))
_register(replace(DEFAULT, name="nnUNetPlanner_torchres", plans_name="nnUNetPlans_torchres",
                  resampling=dict(TORCH_RESAMPLING)))

RESENC = _register(PlannerPreset(
    "ResEncUNetPlanner", "nnUNetResEncUNetPlans", network_class_name=RESENC_UNET, encoder_key="n_blocks_per_stage",
    encoder_blocks=(1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6), decoder_convs=(1,) * 12,
    reference_3d=680_000_000, reference_2d=135_000_000, loop_scales_by_ref_bs=False, shares_default_data=True,
))
RESENC_M = _register(replace(RESENC, name="nnUNetPlannerResEncM", plans_name="nnUNetResEncUNetMPlans",
                             max_dataset_covered=1.0, warn_other_gpu_target=True))
RESENC_L = _register(replace(RESENC, name="nnUNetPlannerResEncL", plans_name="nnUNetResEncUNetLPlans",
                             gpu_memory_target_gb=24.0, reference_gb=24.0, reference_3d=2_100_000_000,
                             reference_2d=380_000_000, max_dataset_covered=1.0, warn_other_gpu_target=True))
RESENC_XL = _register(replace(RESENC, name="nnUNetPlannerResEncXL", plans_name="nnUNetResEncUNetXLPlans",
                              gpu_memory_target_gb=40.0, reference_gb=40.0, reference_3d=3_600_000_000,
                              reference_2d=560_000_000, max_dataset_covered=1.0, warn_other_gpu_target=True))
_register(replace(RESENC_L, name="nnUNetPlannerResEncL_torchres", plans_name="nnUNetResEncUNetLPlans_torchres",
                  shares_default_data=False, resampling=dict(TORCH_RESAMPLING)))
_register(replace(RESENC_L, name="nnUNetPlannerResEncL_torchres_sepz",
                  plans_name="nnUNetResEncUNetLPlans_torchres_sepz", shares_default_data=False,
                  resampling=dict(TORCH_RESAMPLING_SEPZ)))
