"""U-Net topology from spacing and patch size (nnU-Net's ``get_pool_and_conv_props`` rules).

The encoder pools (stride 2) every axis that is still at least ``2 * min_feature_map_size`` voxels long and whose
current spacing is within a factor 2 of the finest current spacing among those axes; if only one axis qualifies it
must be at least ``3 * min_feature_map_size`` long. A convolution kernel along an axis is 3 once that axis' spacing is
within a factor 2 of the finest spacing (1 before that: in-plane convolutions for anisotropic data); the bottleneck
always uses 3. The patch is then padded up to a multiple of ``2 ** pools`` per axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Topology", "get_pool_and_conv_props", "pad_shape", "reduce_patch_axis"]


@dataclass(frozen=True)
class Topology:
    """The result of :func:`get_pool_and_conv_props`.

    Attributes:
        num_pool_per_axis: number of stride-2 poolings per spatial axis.
        strides: per stage, the stride of each axis (first stage all 1), ``n_stages`` entries.
        kernel_sizes: per stage, the convolution kernel size of each axis, ``n_stages`` entries.
        patch_size: the input patch padded to a multiple of ``2 ** num_pool_per_axis``.
        divisible_by: ``2 ** num_pool_per_axis`` per axis.
    """

    num_pool_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def pad_shape(shape: Sequence[float], divisible_by: Sequence[int]) -> tuple[int, ...]:
    """Round each entry of ``shape`` up to the next multiple of ``divisible_by`` (unchanged if already one).

    Entries may be floats (a median shape such as 106.5 clips the initial patch); the result is ints.
    """
    if len(shape) != len(divisible_by):
        raise ValueError(f"shape {tuple(shape)} and divisible_by {tuple(divisible_by)} differ in length")
    return tuple(int(math.ceil(s / d) * d) for s, d in zip(shape, divisible_by))


def _axes_to_pool(spacing: list[float], size: list[float], min_fm: int, pools: list[int],
                  max_numpool: int) -> list[int]:
    """Axes pooled in the next stage (empty when pooling stops)."""
    axes = [i for i in range(len(size)) if size[i] >= 2 * min_fm]
    if not axes:
        return []
    finest = min(spacing[i] for i in axes)
    axes = [i for i in axes if spacing[i] / finest < 2 and pools[i] < max_numpool]
    if len(axes) == 1 and size[axes[0]] < 3 * min_fm:
        return []
    return axes


def get_pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[float], min_feature_map_size: int = 4,
                            max_numpool: int = 999_999) -> Topology:
    """Pooling strides, kernel sizes and the padded patch size for a U-Net on ``patch_size`` at ``spacing``.

    Args:
        spacing: voxel spacing per spatial axis (2 or 3 values, transposed order).
        patch_size: the wished-for patch, one size per axis.
        min_feature_map_size: smallest edge length of a bottleneck feature map (nnU-Net: 4).
        max_numpool: cap on poolings per axis.

    Returns:
        The :class:`Topology`; ``patch_size`` is padded up to multiples of ``2 ** pools`` per axis.
    """
    if len(spacing) != len(patch_size):
        raise ValueError(f"spacing {tuple(spacing)} and patch size {tuple(patch_size)} differ in length")
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(s) for s in patch_size]
    pools = [0] * dim
    kernel = [1] * dim
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    while True:
        axes = _axes_to_pool(cur_spacing, cur_size, min_feature_map_size, pools, max_numpool)
        if not axes:
            break
        finest = min(cur_spacing)
        kernel = [3 if k == 3 or cur_spacing[d] / finest < 2 else 1 for d, k in enumerate(kernel)]
        for a in axes:
            pools[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(tuple(2 if d in axes else 1 for d in range(dim)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisible_by = tuple(2 ** p for p in pools)
    return Topology(tuple(pools), tuple(strides), tuple(kernels), pad_shape(patch_size, divisible_by), divisible_by)


def reduce_patch_axis(patch_size: Sequence[int], axis: int, spacing: Sequence[float], divisible_by: Sequence[int],
                      min_feature_map_size: int = 4) -> Topology:
    """Shrink one axis of the patch by one divisibility step and recompute the topology.

    The step is recomputed for the shrunk patch so that no valid size is skipped (e.g. 256 with divisor 64 goes to
    224, not 192): subtract the current divisor, recompute the divisor of that smaller patch, and subtract the new
    divisor from the original size instead.
    """
    trial = list(patch_size)
    trial[axis] -= divisible_by[axis]
    step = get_pool_and_conv_props(spacing, trial, min_feature_map_size).divisible_by[axis]
    reduced = list(patch_size)
    reduced[axis] -= step
    return get_pool_and_conv_props(spacing, reduced, min_feature_map_size)
