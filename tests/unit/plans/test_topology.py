"""U-Net topology rules (nnU-Net's get_pool_and_conv_props) and patch-size helpers."""

from __future__ import annotations

import pytest

from nnseg.plans.configuration import initial_patch_size
from nnseg.plans.topology import get_pool_and_conv_props, pad_shape, reduce_patch_axis


def test_anisotropic_axis_is_pooled_late_with_in_plane_kernels_first() -> None:
    topo = get_pool_and_conv_props([3.0053266286849976, 0.8333277702331543, 0.8471532762050629], [33.0, 96.0, 106.5])
    assert topo.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert topo.kernel_sizes == ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert topo.num_pool_per_axis == (3, 4, 4)
    assert topo.patch_size == (40, 96, 112) and topo.divisible_by == (8, 16, 16)
    assert topo.n_stages == 5


def test_strongly_anisotropic_spacing() -> None:
    topo = get_pool_and_conv_props([5.0, 1.0, 1.0], [20, 160, 160])
    assert topo.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert topo.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert topo.patch_size == (20, 160, 160) and topo.divisible_by == (4, 32, 32)


def test_isotropic_pools_until_min_feature_map() -> None:
    topo = get_pool_and_conv_props([1.0, 1.0, 1.0], [128, 128, 128])
    assert topo.num_pool_per_axis == (5, 5, 5)
    assert topo.n_stages == 6 and topo.kernel_sizes == ((3, 3, 3),) * 6


@pytest.mark.parametrize(("patch", "strides"), [
    ((4, 10), ((1, 1),)),                    # a lone axis needs >= 3 * 4 voxels to be pooled
    ((4, 12), ((1, 1), (1, 2))),
    ((10, 100), ((1, 1), (2, 2), (1, 2), (1, 2), (1, 2))),
])
def test_single_axis_needs_three_times_min_feature_map(patch: tuple[int, int], strides: tuple) -> None:
    assert get_pool_and_conv_props([1.0, 1.0], patch).strides == strides


def test_max_numpool_caps_pooling() -> None:
    assert get_pool_and_conv_props([1.0, 1.0], [256, 256], 4, 2).num_pool_per_axis == (2, 2)


def test_pad_shape() -> None:
    assert pad_shape([33, 96, 106.5], [8, 16, 16]) == (40, 96, 112)
    assert pad_shape([96.5, 64], [16, 64]) == (112, 64)
    with pytest.raises(ValueError, match="differ in length"):
        pad_shape([1, 2], [1])


def test_reduce_does_not_skip_valid_sizes() -> None:
    topo = get_pool_and_conv_props([1.0] * 3, [256, 256, 256])
    assert topo.divisible_by == (64, 64, 64)
    smaller = reduce_patch_axis(topo.patch_size, 0, [1.0] * 3, topo.divisible_by)
    assert smaller.patch_size == (224, 256, 256)  # not 192
    assert smaller.num_pool_per_axis == (5, 6, 6)


def test_initial_patch_size_volume_and_clipping() -> None:
    assert initial_patch_size([1.0, 1.0, 1.0], [500, 500, 500]) == [256, 256, 256]
    assert initial_patch_size([1.0, 1.0, 1.0], [36.0, 50.0, 35.0]) == [36.0, 50.0, 35.0]
    assert initial_patch_size([1.0, 1.0], [4000, 4000]) == [2048, 2048]
    aniso = initial_patch_size([4.0, 1.0, 1.0], [1000, 1000, 1000])
    assert aniso[1] == aniso[2] and abs(aniso[1] / aniso[0] - 4) < 0.05
    with pytest.raises(ValueError, match="2 or 3 axes"):
        initial_patch_size([1.0], [10])
