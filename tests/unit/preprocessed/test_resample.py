"""Resampling: nnU-Net's separate-z rule, scipy (skimage-equivalent) kernels, torch variant agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnseg.preprocessed.resample import (
    RESAMPLERS,
    compute_new_shape,
    determine_do_sep_z_and_axis,
    get_resampler,
    resample_data_or_seg_to_shape,
    resize_image,
    resize_segmentation,
)
from nnseg.preprocessed.spline import spline_zoom
from nnseg.preprocessed.resample_torch import resample_logits_on_device, resample_torch_fornnunet, resample_torch_simple


def test_compute_new_shape() -> None:
    assert compute_new_shape((39, 105, 109), (3.2756857, 0.7450414, 0.7600332), (3.0053266, 0.8333278, 0.8471533)) == (43, 94, 98)
    with pytest.raises(ValueError, match="length"):
        compute_new_shape((3, 3), (1, 1, 1), (1, 1, 1))


@pytest.mark.parametrize(
    ("force", "cur", "new", "expected"),
    [
        (None, (1, 1, 1), (1, 1, 1), (False, None)),
        (None, (4, 1, 1), (1, 1, 1), (True, 0)),  # current spacing anisotropic
        (None, (1, 1, 1), (1, 1, 5), (True, 2)),  # else target spacing decides
        (None, (1, 4, 4), (1, 1, 1), (False, None)),  # two low-res axes: no separate z
        (None, (2, 1, 1), (2, 1, 1), (False, None)),  # ratio 2 <= 3
        (True, (1, 2, 1), (1, 1, 1), (True, 1)),
        (False, (5, 1, 1), (1, 1, 1), (False, None)),
    ],
)
def test_separate_z_rule(force, cur, new, expected) -> None:
    assert determine_do_sep_z_and_axis(force, cur, new) == expected


@pytest.mark.parametrize(("shape", "new_shape"), [((9, 17, 13), (14, 30, 20)), ((9, 17, 13), (5, 8, 30)), ((7, 6), (3, 11)), ((5, 6, 7), (5, 12, 7))])
def test_separable_cubic_equals_scipy_zoom(rng: np.random.Generator, shape, new_shape) -> None:
    x = rng.normal(size=shape)
    ref = ndimage.zoom(x, [n / o for n, o in zip(new_shape, shape)], order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(spline_zoom(x, new_shape, 3), ref, atol=1e-10)


def test_separate_z_in_plane_equals_slice_by_slice(rng: np.random.Generator) -> None:
    vol = rng.normal(size=(4, 9, 11)).astype(np.float32) * np.arange(1, 5, dtype=np.float32)[:, None, None]
    got = resize_image(vol, (4, 13, 7), 3, slice_axis=0)
    for i in range(4):  # each slice clipped to its own range, as per-slice skimage resizes are
        np.testing.assert_allclose(got[i], resize_image(vol[i], (13, 7), 3), atol=1e-6)


def test_resize_image_linear_ramp_and_clip() -> None:
    ramp = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    up = resize_image(ramp, (8, 3), order=1)
    # half-voxel grid with edge clamping: x_src = (i + 0.5) / 2 - 0.5
    expected = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    np.testing.assert_allclose(up[:, 1], expected, atol=1e-6)
    step = np.zeros((6, 6), np.float32)
    step[3:] = 1.0
    cubic = resize_image(step, (13, 13), order=3)
    assert cubic.min() >= 0.0 and cubic.max() <= 1.0  # overshoot clipped to the input range
    assert resize_image(step, (6, 6), order=3) is not step and np.array_equal(resize_image(step, (6, 6), order=3), step)


def test_resize_segmentation_blocks_and_order0() -> None:
    seg = np.zeros((4, 4), dtype=np.int16)
    seg[:2, :2] = 1
    seg[2:, 2:] = -1
    up = resize_segmentation(seg, (8, 8), order=1)
    assert up.dtype == np.int16
    np.testing.assert_array_equal(up, np.kron(seg, np.ones((2, 2), np.int16)))
    near = resize_segmentation(seg, (2, 2), order=0)
    assert set(np.unique(near)) <= {-1, 0, 1}


def test_separate_z_uses_nearest_along_lowres_axis() -> None:
    data = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], (5, 4, 4))[None].copy()
    out = resample_data_or_seg_to_shape(data, (8, 6, 6), (4.0, 1.0, 1.0), (2.5, 0.67, 0.67), order=3, order_z=0)
    scale = 5 / 8
    want_idx = np.clip(np.floor(scale * (np.arange(8) + 0.5)), 0, 4)
    np.testing.assert_allclose(out[0, :, 3, 3], want_idx, atol=1e-5)
    same = resample_data_or_seg_to_shape(data, (5, 4, 4), (4.0, 1.0, 1.0), (1, 1, 1))
    assert same is data


def test_separate_z_with_order_z_linear_and_seg() -> None:
    data = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 3, 3))[None].copy()
    out = resample_data_or_seg_to_shape(data, (8, 3, 3), (4.0, 1.0, 1.0), (2.0, 1.0, 1.0), order=1, order_z=1)
    np.testing.assert_allclose(out[0, :, 1, 1], np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3), atol=1e-6)
    seg = np.zeros((1, 4, 6, 6), dtype=np.int16)
    seg[0, :, :3] = 2
    for order_z in (0, 1):
        s = resample_data_or_seg_to_shape(seg, (8, 12, 12), (4.0, 1, 1), (2.0, 0.5, 0.5), is_seg=True, order=1, order_z=order_z)
        np.testing.assert_array_equal(s[0, :, :6], 2)
        np.testing.assert_array_equal(s[0, :, 6:], 0)


def test_registry_and_bound_kwargs(rng: np.random.Generator) -> None:
    assert {"resample_data_or_seg_to_shape", "resample_torch_fornnunet"} <= set(RESAMPLERS.names())
    data = rng.random((1, 5, 6, 7)).astype(np.float32)
    fn = get_resampler("resample_data_or_seg_to_shape", {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None})
    np.testing.assert_array_equal(fn(data, (7, 8, 9), (1, 1, 1), (1, 1, 1)), resample_data_or_seg_to_shape(data, (7, 8, 9), (1, 1, 1), (1, 1, 1), order=1))
    torch_fn = get_resampler("resample_torch_fornnunet", {"is_seg": False, "force_separate_z": False, "memefficient_seg_resampling": False})
    assert isinstance(torch_fn(data, (7, 8, 9), (1, 1, 1), (1, 1, 1)), np.ndarray)
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        resample_data_or_seg_to_shape(data[0], (2, 2, 2), (1, 1, 1), (1, 1, 1))


@pytest.mark.parametrize(
    ("new_shape", "cur", "new"),
    [((14, 30, 20), (1, 1, 1), (1, 1, 1)), ((5, 8, 30), (1, 1, 1), (1, 1, 1)), ((20, 30, 26), (4, 1, 1), (2, 0.5, 0.5))],
)
def test_torch_linear_matches_scipy_order1(rng: np.random.Generator, new_shape, cur, new) -> None:
    data = rng.random((2, 9, 17, 13)).astype(np.float32)
    ref = resample_data_or_seg_to_shape(data, new_shape, cur, new, order=1, order_z=0)
    got = resample_torch_fornnunet(data, new_shape, cur, new)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    seg = np.zeros((1, 9, 17, 13), dtype=np.int16)
    seg[0, 2:7, 3:12, 4:10] = 1
    seg[0, 4:6, 6:9, 5:8] = 2
    ref_s = resample_data_or_seg_to_shape(seg, new_shape, cur, new, is_seg=True, order=1)
    for memefficient in (False, True):
        got_s = resample_torch_fornnunet(seg, new_shape, cur, new, is_seg=True, memefficient_seg_resampling=memefficient)
        assert got_s.dtype == np.int8
        assert (got_s == ref_s).mean() > 0.99


def test_torch_tensor_in_tensor_out_and_2d(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.random((3, 4, 5, 6)).astype(np.float32))
    out = resample_logits_on_device(x, (8, 10, 12), (1, 1, 1), (0.5, 0.5, 0.5))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 8, 10, 12) and out.device == x.device
    img2d = rng.random((1, 6, 6)).astype(np.float32)
    assert resample_torch_simple(img2d, (12, 12)).shape == (1, 12, 12)
    assert resample_torch_fornnunet(x, (4, 5, 6), (1, 1, 1), (1, 1, 1)) is x
    with pytest.raises(ValueError, match="X, Y, Z"):
        resample_torch_fornnunet(x[0], (2, 2, 2), (1, 1, 1), (1, 1, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_resampling_on_cuda_equals_cpu(rng: np.random.Generator) -> None:
    data = rng.random((2, 16, 24, 24)).astype(np.float32)
    seg = (rng.random((1, 16, 24, 24)) * 3).astype(np.int16)
    for cur, new in (((1, 1, 1), (0.7, 0.7, 0.7)), ((4, 1, 1), (2.5, 0.8, 0.8))):
        ns = compute_new_shape(data.shape[1:], cur, new)
        gpu = resample_torch_fornnunet(torch.from_numpy(data).cuda(), ns, cur, new)
        assert gpu.is_cuda
        np.testing.assert_allclose(gpu.cpu().numpy(), resample_torch_fornnunet(data, ns, cur, new), atol=1e-6)
        gseg = resample_torch_fornnunet(torch.from_numpy(seg).cuda(), ns, cur, new, is_seg=True)
        assert (gseg.cpu().numpy() == resample_torch_fornnunet(seg, ns, cur, new, is_seg=True)).mean() > 0.999
