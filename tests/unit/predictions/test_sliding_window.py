"""Exact tests of the sliding window (style guide G7): identity / x+1 predictors, step rules, padding, batching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nnseg.predictions.inference.sliding_window import (
    autocast_context,
    compute_steps,
    cpu_has_native_bf16,
    default_precision,
    gaussian_importance,
    pad_to_patch,
    sliding_window_predict,
    tile_slicers,
)


def _arange(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def plus_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@pytest.mark.parametrize(
    "size,patch,step",
    [((10,), (4,), 0.5), ((7,), (7,), 0.5), ((100,), (32,), 0.5), ((33,), (32,), 0.5), ((50,), (16,), 1.0),
     ((50,), (16,), 0.25), ((40, 56, 40), (40, 56, 40), 0.5)],
)
def test_steps_start_at_zero_end_at_border_and_cover(size, patch, step):
    steps = compute_steps(size, patch, step)
    for axis_steps, s, p in zip(steps, size, patch):
        assert axis_steps[0] == 0
        assert axis_steps[-1] == s - p
        assert axis_steps == sorted(axis_steps)
        covered = np.zeros(s, bool)
        for start in axis_steps:
            covered[start:start + p] = True
        assert covered.all()
        gaps = np.diff(axis_steps)
        assert (gaps <= p * step + 1).all()  # never a step larger than asked (up to rounding)
        assert len(axis_steps) == math.ceil((s - p) / (p * step)) + 1


def test_steps_known_values():
    assert compute_steps((10, 4), (4, 4), 0.5) == [[0, 2, 4, 6], [0]]
    # 6 steps for 100 with patch 32 (ceil(68/16)+1), evenly spaced by 68/5 = 13.6 and rounded
    assert compute_steps((100,), (32,), 0.5) == [[0, 14, 27, 41, 54, 68]]
    assert compute_steps((33, 32), (32, 32), 0.5) == [[0, 1], [0]]


@pytest.mark.parametrize("bad", [dict(image_size=(3, 10), patch_size=(4, 4), step_size=0.5),
                                 dict(image_size=(10,), patch_size=(4, 4), step_size=0.5),
                                 dict(image_size=(10,), patch_size=(4,), step_size=0.0),
                                 dict(image_size=(10,), patch_size=(4,), step_size=1.5)])
def test_steps_reject_bad_input(bad):
    with pytest.raises(ValueError):
        compute_steps(**bad)


def test_gaussian_peak_center_and_no_zeros():
    g = gaussian_importance((9, 16, 7))
    assert g.shape == (9, 16, 7) and g.dtype == torch.float32
    assert torch.isclose(g.max(), torch.tensor(10.0))
    assert g[4, 8, 3] == g.max()
    assert (g > 0).all()
    g16 = gaussian_importance((64, 64, 64), dtype=torch.float16)
    assert g16.dtype == torch.float16 and (g16 > 0).all()


def test_pad_to_patch_is_centred_and_reverts():
    x = _arange((2, 3, 5))
    padded, revert = pad_to_patch(x, (6, 4))
    assert padded.shape == (2, 6, 5)
    assert torch.equal(padded[revert], x)
    assert revert[1] == slice(1, 4)  # diff 3: 1 below, 2 above (nnU-Net's pad_nd_image)
    assert padded[:, 0].abs().sum() == 0 and padded[:, 4:].abs().sum() == 0


@pytest.mark.parametrize("shape,patch", [((2, 20, 17, 9), (8, 8, 4)), ((1, 13, 30), (8, 16)), ((3, 5, 11, 9), (4, 4))])
@pytest.mark.parametrize("use_gaussian", [False, True])
def test_identity_and_plus_one_exact(shape, patch, use_gaussian):
    x = _arange(shape)
    out = sliding_window_predict(identity, x, patch, num_outputs=shape[0], use_gaussian=use_gaussian)
    assert out.shape == x.shape and out.dtype == torch.float32
    if use_gaussian:  # sum(w * x) / sum(w): exact up to fp32 rounding
        torch.testing.assert_close(out, x, rtol=2e-6, atol=0)
    else:
        assert torch.equal(out, x)
    out1 = sliding_window_predict(plus_one, x, patch, num_outputs=shape[0], use_gaussian=use_gaussian)
    torch.testing.assert_close(out1, x + 1, rtol=2e-6, atol=0)


@pytest.mark.parametrize("shape,patch", [((1, 3, 5, 2), (8, 8, 4)), ((2, 4, 9), (8, 8)), ((1, 3, 2, 9), (4, 16))])
def test_image_smaller_than_patch(shape, patch):
    x = _arange(shape) + 1
    seen: list[tuple[int, ...]] = []

    def predictor(t: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(t.shape[2:]))
        return t * 2

    out = sliding_window_predict(predictor, x, patch, num_outputs=shape[0])
    assert out.shape == x.shape
    torch.testing.assert_close(out, 2 * x, rtol=2e-6, atol=0)
    assert set(seen) == {tuple(patch)}


def test_output_channels_differ_from_input():
    x = _arange((2, 12, 10, 9))

    def predictor(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.sum(1, keepdim=True), -t[:, :1], t[:, 1:] * 3], dim=1)

    out = sliding_window_predict(predictor, x, (6, 6, 6), num_outputs=3, use_gaussian=False)
    expected = torch.cat([x.sum(0, keepdim=True), -x[:1], x[1:] * 3])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape,patch", [((2, 20, 17, 9), (8, 8, 4)), ((1, 6, 13, 30), (8, 16))])
def test_batched_tiles_equal_unbatched(shape, patch, rng):
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    conv = torch.nn.Conv3d if len(patch) == 3 else torch.nn.Conv2d
    torch.manual_seed(0)
    net = conv(shape[0], 3, 3, padding=1).eval()
    ref = sliding_window_predict(net, x, patch, num_outputs=3, batch_size=1)
    for bs in (2, 3, 64):
        out = sliding_window_predict(net, x, patch, num_outputs=3, batch_size=bs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_slicewise_2d_on_volume_runs_every_slice_separately():
    x = _arange((1, 4, 10, 12))
    calls: list[torch.Tensor] = []

    def predictor(t: torch.Tensor) -> torch.Tensor:
        assert t.ndim == 4  # (B, C, X, Y): a 2D network sees 2D tiles
        calls.append(t)
        return t + 1

    out = sliding_window_predict(predictor, x, (8, 8), num_outputs=1)
    torch.testing.assert_close(out, x + 1, rtol=2e-6, atol=0)
    assert len(calls) == 4 * 2 * 2  # 4 slices x compute_steps((10, 12), (8, 8), 0.5) = [[0, 2], [0, 4]]
    slicers = tile_slicers((4, 10, 12), (8, 8), 0.5)
    assert slicers[:2] == [(slice(0, 1), slice(0, 8), slice(0, 8)), (slice(0, 1), slice(0, 8), slice(4, 12))]
    assert len(slicers) == 16


def test_fp16_accumulation_and_finite_check():
    x = _arange((1, 10, 10, 10)) / 1000
    out = sliding_window_predict(identity, x, (6, 6, 6), num_outputs=1, dtype=torch.float16, use_gaussian=False)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), x, rtol=2e-3, atol=2e-3)
    # with Gaussian weights fp16 loses precision where only far tile corners (subnormal weights) cover a voxel
    out = sliding_window_predict(identity, x, (6, 6, 6), num_outputs=1, dtype=torch.float16)
    inner = (slice(None), slice(2, 8), slice(2, 8), slice(2, 8))
    torch.testing.assert_close(out.float()[inner], x[inner], rtol=2e-3, atol=2e-3)

    def bad(t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, float("nan"))

    with pytest.raises(RuntimeError, match="non-finite"):
        sliding_window_predict(bad, x, (6, 6, 6), num_outputs=1)


def test_result_is_a_normal_tensor_and_predictor_runs_in_inference_mode():
    modes: list[bool] = []

    def predictor(t: torch.Tensor) -> torch.Tensor:
        modes.append(torch.is_inference_mode_enabled())
        return t

    out = sliding_window_predict(predictor, _arange((1, 8, 8)), (4, 4), num_outputs=1)
    out += 1  # would raise for an inference tensor
    assert modes and all(modes)


def test_deep_supervision_list_output_uses_first():
    x = _arange((1, 8, 8))
    out = sliding_window_predict(lambda t: [t + 1, t[..., ::2, ::2]], x, (4, 4), num_outputs=1, use_gaussian=False)
    assert torch.equal(out, x + 1)


@pytest.mark.parametrize("shape,patch", [((1, 8, 8), (4, 4, 4)), ((1, 2, 8, 8, 8), (4, 4, 4)), ((8, 8, 8), (4, 4, 4, 4))])
def test_bad_shapes_raise(shape, patch):
    with pytest.raises(ValueError, match="patch"):
        sliding_window_predict(identity, torch.zeros(shape), patch, num_outputs=1)


def test_not_a_tensor_raises():
    with pytest.raises(TypeError, match="torch.from_numpy"):
        sliding_window_predict(identity, np.zeros((1, 4, 4)), (4, 4), num_outputs=1)  # type: ignore[arg-type]


def test_oom_falls_back_to_cpu_accumulation_only_for_cuda(monkeypatch):
    import nnseg.predictions.inference.sliding_window as sw

    real = sw._accumulate
    devices: list[torch.device] = []

    def fake(*args, acc_device, **kwargs):
        devices.append(acc_device)
        if acc_device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("fake OOM")
        return real(*args, acc_device=acc_device, **kwargs)

    monkeypatch.setattr(sw, "_accumulate", fake)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    x = _arange((1, 8, 8))
    out = sw.sliding_window_predict(identity, x, (4, 4), num_outputs=1, device="cpu", accumulate_device="cuda")
    assert [d.type for d in devices] == ["cuda", "cpu"]
    torch.testing.assert_close(out, x, rtol=2e-6, atol=0)

    def other_error(*args, **kwargs):
        raise RuntimeError("not an OOM")

    monkeypatch.setattr(sw, "_accumulate", other_error)
    with pytest.raises(RuntimeError, match="not an OOM"):
        sw.sliding_window_predict(identity, x, (4, 4), num_outputs=1, accumulate_device="cuda")


def test_precision_helpers(tmp_path: Path, monkeypatch):
    assert default_precision("cuda") == "fp16"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16\n")
    monkeypatch.setattr("sys.platform", "linux")
    assert cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert not cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")
    assert default_precision("cpu") in ("bf16", "fp32")
    with autocast_context("cpu", "bf16"):
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.bfloat16
    with autocast_context("cpu", "fp32"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast_context("cpu", "int8")


def test_slicewise_helper_equals_per_slice_2d_prediction(rng):
    from nnseg.predictions.inference.sliding_window import sliding_window_predict_slicewise

    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 3, 3, padding=1).eval()
    vol = torch.from_numpy(rng.standard_normal((2, 3, 11, 9)).astype(np.float32))
    out = sliding_window_predict_slicewise(net, vol, (8, 8), num_outputs=3)
    per_slice = torch.stack([sliding_window_predict(net, vol[:, z], (8, 8), num_outputs=3) for z in range(3)], dim=1)
    torch.testing.assert_close(out, per_slice, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="slice-wise"):
        sliding_window_predict_slicewise(net, vol[:, 0], (8, 8), num_outputs=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_autocast_matches_cpu_fp32(rng):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 2, 1)).eval()
    x = torch.from_numpy(rng.standard_normal((1, 30, 25, 20)).astype(np.float32))
    ref = sliding_window_predict(net, x, (16, 16, 16), num_outputs=2, batch_size=2)
    gpu_net = net.to("cuda")

    def predictor(t: torch.Tensor) -> torch.Tensor:
        with autocast_context("cuda", default_precision("cuda")):
            return gpu_net(t)

    for dtype in (torch.float32, torch.float16):
        out = sliding_window_predict(predictor, x, (16, 16, 16), num_outputs=2, batch_size=2, device="cuda", dtype=dtype)
        assert out.device.type == "cuda" and out.dtype == dtype
        torch.testing.assert_close(out.float().cpu(), ref, rtol=2e-2, atol=2e-2)
    out = sliding_window_predict(predictor, x, (16, 16, 16), num_outputs=2, device="cuda", accumulate_device="cpu")
    assert out.device.type == "cpu"


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float16])
def test_low_precision_predictor_outputs_are_accumulated(out_dtype, acc_dtype):
    x = _arange((1, 9, 10)) / 100
    out = sliding_window_predict(lambda t: t.to(out_dtype), x, (6, 6), num_outputs=1, dtype=acc_dtype)
    assert out.dtype == acc_dtype
    inner = (slice(None), slice(1, 8), slice(1, 9))
    torch.testing.assert_close(out.float()[inner], x[inner], rtol=1e-2, atol=1e-2)
