"""Plan one configuration: patch size, topology, batch size (nnU-Net's ``get_plans_for_configuration`` rules).

1. Initial patch proportional to ``1 / spacing`` with the volume of 256**3 (3D) or 2048**2 (2D), clipped to the
   median shape.
2. Topology from :func:`nnseg.plans.topology.get_pool_and_conv_props` (patch padded to multiples of ``2**pools``).
3. VRAM proxy = the network's summed feature-map size (``nnseg.networks.estimate_feature_map_size``). While it is
   over the budget (default planner: ``estimate / ref_bs * 2 > reference``; ResEnc: ``estimate > reference``), shrink
   the axis with the largest ``patch / median_shape`` ratio by one divisibility step and recompute.
4. Batch size ``round(reference / estimate * ref_bs)``, capped so a batch covers at most ``max_dataset_covered`` of the
   dataset's voxels, and at least ``min_batch_size``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from nnseg.networks import estimate_feature_map_size
from nnseg.plans.architecture import architecture_entry
from nnseg.plans.presets import PlannerPreset
from nnseg.plans.topology import Topology, get_pool_and_conv_props, reduce_patch_axis

__all__ = ["PlanningContext", "initial_patch_size", "plan_configuration"]



@dataclass
class PlanningContext:
    """What every configuration of one dataset shares.

    Attributes:
        preset: the planner's constants.
        num_input_channels: image channels.
        num_classes: number of ``labels`` entries in ``dataset.json`` (nnU-Net's count for the VRAM estimate).
        normalization_schemes / use_mask_for_norm: per channel.
        gpu_memory_target_gb: the memory the plans are made for.
        preprocessor_name: written to every configuration.
        cache: VRAM estimates by (patch, strides), shared by all configurations.
    """

    preset: PlannerPreset
    num_input_channels: int
    num_classes: int
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    gpu_memory_target_gb: float
    preprocessor_name: str = "DefaultPreprocessor"
    cache: dict[str, int] = field(default_factory=dict)

    def reference(self, ndim: int) -> float:
        """Feature-map-size budget at this GPU target."""
        p = self.preset
        return (p.reference_2d if ndim == 2 else p.reference_3d) * (self.gpu_memory_target_gb / p.reference_gb)

    def ref_bs(self, ndim: int) -> int:
        return self.preset.ref_bs_2d if ndim == 2 else self.preset.ref_bs_3d


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> list[float]:
    """Patch with aspect ``1 / spacing`` and the volume of 256**3 (3D) / 2048**2 (2D), clipped to ``median_shape``.

    Entries are ints, or the (possibly fractional) median size where that is smaller; the topology pads them.
    """
    inv = 1 / np.asarray(spacing, dtype=np.float64)
    if len(spacing) == 3:
        raw = inv * (256 ** 3 / np.prod(inv)) ** (1 / 3)
    elif len(spacing) == 2:
        raw = inv * (2048 ** 2 / np.prod(inv)) ** (1 / 2)
    else:
        raise ValueError(f"spacing {tuple(spacing)} must have 2 or 3 axes")
    return [min(round(float(p)), float(m)) for p, m in zip(raw, median_shape)]


def _architecture(ctx: PlanningContext, topo: Topology) -> dict[str, Any]:
    p, ndim, n = ctx.preset, len(topo.patch_size), topo.n_stages
    max_features = p.max_features_2d if ndim == 2 else p.max_features_3d
    return architecture_entry(
        p.network_class_name, ndim=ndim,
        features_per_stage=[min(max_features, p.base_num_features * 2 ** i) for i in range(n)],
        kernel_sizes=[list(k) for k in topo.kernel_sizes], strides=[list(s) for s in topo.strides],
        encoder_key=p.encoder_key, encoder_blocks=list(p.encoder_blocks[:n]), decoder_convs=list(p.decoder_convs[:n - 1]))


def _estimate(ctx: PlanningContext, topo: Topology, architecture: dict[str, Any]) -> int:
    key = f"{list(topo.patch_size)}_{[list(s) for s in topo.strides]}"
    if key not in ctx.cache:
        ctx.cache[key] = estimate_feature_map_size(architecture, topo.patch_size,
                                                   input_channels=ctx.num_input_channels,
                                                   num_classes=ctx.num_classes, deep_supervision=True)
    return ctx.cache[key]


def _too_big(ctx: PlanningContext, estimate: int, ndim: int) -> bool:
    if ctx.preset.loop_scales_by_ref_bs:
        return estimate / ctx.ref_bs(ndim) * 2 > ctx.reference(ndim)
    return estimate > ctx.reference(ndim)


def _fit_patch(ctx: PlanningContext, spacing: Sequence[float], median_shape: Sequence[float]
               ) -> tuple[Topology, dict[str, Any], int]:
    """Shrink the patch until the VRAM estimate fits; returns topology, architecture and estimate."""
    min_fm = ctx.preset.min_feature_map_size
    topo = get_pool_and_conv_props(spacing, initial_patch_size(spacing, median_shape), min_fm)
    arch = _architecture(ctx, topo)
    estimate = _estimate(ctx, topo, arch)
    while _too_big(ctx, estimate, len(spacing)):
        ratios = [p / m for p, m in zip(topo.patch_size, median_shape)]
        axis = int(np.argsort(ratios, kind="stable")[-1])
        if topo.patch_size[axis] <= topo.divisible_by[axis]:
            raise ValueError(f"cannot fit a patch for spacing {list(spacing)} into the GPU memory target of "
                             f"{ctx.gpu_memory_target_gb} GB (patch {list(topo.patch_size)}); raise the target")
        topo = reduce_patch_axis(topo.patch_size, axis, spacing, topo.divisible_by, min_fm)
        arch = _architecture(ctx, topo)
        estimate = _estimate(ctx, topo, arch)
    return topo, arch, estimate


def _batch_size(ctx: PlanningContext, estimate: int, patch: Sequence[int], n_voxels_dataset: float) -> int:
    ndim = len(patch)
    bs = round(ctx.reference(ndim) / estimate * ctx.ref_bs(ndim))
    cap = round(float(n_voxels_dataset * ctx.preset.max_dataset_covered / np.prod(patch, dtype=np.float64)))
    return int(max(min(bs, cap), ctx.preset.min_batch_size))


def plan_configuration(ctx: PlanningContext, spacing: Sequence[float], median_shape: Sequence[float], *,
                       data_identifier: str, n_voxels_dataset: float) -> dict[str, Any]:
    """The plans dict of one configuration (without ``batch_dice``, which depends on the other configurations).

    Args:
        ctx: dataset-wide planning settings.
        spacing: target spacing (transposed), 2 or 3 values.
        median_shape: median case shape at that spacing (transposed); written as ``median_image_size_in_voxels``.
        data_identifier: name of the preprocessed-data folder.
        n_voxels_dataset: approximate voxels in the whole training set (for the batch-size cap).
    """
    if any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing {list(spacing)} must be > 0; check the fingerprint's spacings or "
                         "-overwrite_target_spacing")
    topo, arch, estimate = _fit_patch(ctx, spacing, median_shape)
    plan: dict[str, Any] = {
        "data_identifier": data_identifier,
        "preprocessor_name": ctx.preprocessor_name,
        "batch_size": _batch_size(ctx, estimate, topo.patch_size, n_voxels_dataset),
        "patch_size": [int(p) for p in topo.patch_size],
        "median_image_size_in_voxels": list(median_shape),
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": list(ctx.normalization_schemes),
        "use_mask_for_norm": list(ctx.use_mask_for_norm),
    }
    plan.update(copy.deepcopy(ctx.preset.resampling))
    plan["architecture"] = arch
    return plan
