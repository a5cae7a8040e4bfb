"""Property tests of the batched augmentations (TorchIO's assert_vectorized idea)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nnseg.training.augment.base import Batch
from nnseg.training.augment.intensity import (
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    MultiplicativeBrightness,
    SimulateLowResolution,
)
from nnseg.training.augment.pipeline import (
    AUGMENTATIONS,
    augmentation_setup,
    apply_all,
    default_transforms,
    downsample_for_deep_supervision,
    labels_to_regions,
    mask_outside,
    sample_all,
    sampling_patch_size,
)
from nnseg.training.augment.spatial import Mirror, SpatialTransform, center_crop
from nnseg.training.config import TrainConfig
from nnseg.training.run_spec import check_component_names

ALWAYS = [
    GaussianNoise(p=1.0),
    GaussianBlur(p=1.0, p_per_channel=1.0),
    MultiplicativeBrightness(p=1.0),
    Contrast(p=1.0),
    SimulateLowResolution(p=1.0, p_per_channel=1.0),
    Gamma(p=1.0, invert_image=True),
    Gamma(p=1.0),
    Mirror(axes=(0, 1, 2), p_per_axis=0.5),
]


def _batch(dims: int = 3, b: int = 3, c: int = 2, size: int = 12) -> Batch:
    g = torch.Generator().manual_seed(0)
    image = torch.rand((b, c) + (size,) * dims, generator=g)
    seg = torch.zeros((b, 1) + (size,) * dims, dtype=torch.int16)
    seg[(slice(None), slice(None)) + (slice(3, 8),) * dims] = 1
    seg[(slice(None), slice(None)) + (slice(5, 7),) * dims] = 2
    seg[(slice(None), slice(None), slice(0, 1))] = -1
    return Batch(image, seg)


def _slice_params(params: object, i: int) -> object:
    values = {f.name: getattr(params, f.name)[i:i + 1] for f in dataclasses.fields(params)}  # type: ignore[arg-type]
    return type(params)(**values)


@pytest.mark.parametrize("transform", ALWAYS, ids=lambda t: type(t).__name__)
def test_batched_equals_per_sample(transform: object) -> None:
    batch = _batch()
    params = transform.sample(np.random.default_rng(1), batch)  # type: ignore[attr-defined]
    whole = transform.apply(batch, params)  # type: ignore[attr-defined]
    for i in range(batch.batch_size):
        single = Batch(batch.image[i:i + 1], batch.seg[i:i + 1])
        one = transform.apply(single, _slice_params(params, i))  # type: ignore[attr-defined]
        torch.testing.assert_close(one.image, whole.image[i:i + 1], atol=1e-5, rtol=1e-5)
        assert torch.equal(one.seg, whole.seg[i:i + 1])


@pytest.mark.parametrize("transform", ALWAYS[:-1], ids=lambda t: type(t).__name__)
def test_intensity_transforms_leave_labels_and_change_image(transform: object) -> None:
    batch = _batch()
    out = transform.apply(batch, transform.sample(np.random.default_rng(2), batch))  # type: ignore[attr-defined]
    assert torch.equal(out.seg, batch.seg)
    assert out.image.shape == batch.image.shape
    assert not torch.allclose(out.image, batch.image)


@pytest.mark.parametrize("transform", [
    GaussianNoise(p=1.0, sigma_range=(0.0, 0.0)),
    MultiplicativeBrightness(p=1.0, value_range=(1.0, 1.0)),
    Contrast(p=1.0, value_range=(1.0, 1.0)),
    SimulateLowResolution(p=1.0, p_per_channel=1.0, scale_range=(1.0, 1.0)),
    Gamma(p=1.0, gamma_range=(1.0, 1.0), retain_stats=False),
    Mirror(p_per_axis=0.0),
    GaussianNoise(p=0.0),
    GaussianBlur(p=0.0),
], ids=lambda t: type(t).__name__)
def test_zero_strength_is_identity(transform: object) -> None:
    batch = _batch()
    out = transform.apply(batch, transform.sample(np.random.default_rng(3), batch))  # type: ignore[attr-defined]
    torch.testing.assert_close(out.image, batch.image, atol=1e-5, rtol=1e-5)


def test_spatial_without_motion_is_center_crop() -> None:
    batch = _batch(size=16)
    t = SpatialTransform((10, 10, 10), p_rotation=0.0, p_scaling=0.0)
    out = t.apply(batch, t.sample(np.random.default_rng(0), batch))
    assert torch.equal(out.image, center_crop(batch.image, (10, 10, 10)))
    assert torch.equal(out.seg, center_crop(batch.seg, (10, 10, 10)))


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_moves_image_and_labels_together(dims: int) -> None:
    size = 24
    image = torch.zeros((2, 1) + (size,) * dims)
    region = (slice(None), slice(None)) + (slice(6, 14),) + (slice(8, 12),) * (dims - 1)
    image[region] = 1.0
    seg = (image > 0.5).to(torch.int16)
    t = SpatialTransform((16,) * dims, rotation=(-math.pi, math.pi), p_rotation=1.0, p_scaling=1.0)
    out = t.apply(Batch(image, seg), t.sample(np.random.default_rng(5), Batch(image, seg)))
    assert out.image.shape == (2, 1) + (16,) * dims
    fg_img = out.image > 0.5
    fg_seg = out.seg == 1
    agreement = (fg_img == fg_seg).float().mean().item()
    assert agreement > 0.97
    assert fg_seg.any()


def test_rotation_by_90_degrees_is_exact_in_2d() -> None:
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    t = SpatialTransform((4, 4))
    from nnseg.training.augment.spatial import SpatialParams

    out = t.apply(Batch(image, None), SpatialParams(np.array([[math.pi / 2]]), np.array([1.0])))
    assert torch.allclose(out.image[0, 0], torch.rot90(image[0, 0], 1, (0, 1)), atol=1e-4) or \
        torch.allclose(out.image[0, 0], torch.rot90(image[0, 0], -1, (0, 1)), atol=1e-4)


def test_default_pipeline_runs_3d_2d_and_dummy_2d() -> None:
    for patch in [(8, 12, 12), (16, 16), (4, 16, 16)]:
        setup = augmentation_setup(patch)
        shape = (2, 2, *setup.initial_patch_size)
        batch = Batch(torch.rand(shape), torch.randint(-1, 3, (2, 1, *setup.initial_patch_size), dtype=torch.int16))
        transforms = default_transforms(setup)
        out = apply_all(transforms, batch, sample_all(transforms, np.random.default_rng(0), batch))
        assert out.image.shape == (2, 2, *patch) and out.seg.shape == (2, 1, *patch)
        assert setup.dummy_2d == (patch == (4, 16, 16))


def test_mask_regions_and_deep_supervision_targets() -> None:
    batch = _batch()
    masked = mask_outside(batch, [1])
    outside = batch.seg[:, 0] < 0
    assert (masked.image[:, 1][outside] == 0).all() and torch.equal(masked.image[:, 0], batch.image[:, 0])
    regions = labels_to_regions(batch.seg, [(1, 2), (2,)])
    assert regions.shape[1] == 2 and bool((regions[:, 1] <= regions[:, 0]).all())
    ds = downsample_for_deep_supervision(batch.seg, [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    assert [tuple(t.shape[2:]) for t in ds] == [(12, 12, 12), (6, 6, 6), (3, 3, 3)]


def test_no_augmentation_samples_the_final_patch_and_only_mirrors() -> None:
    """``augmentation=none`` (nnUNetTrainerNoDA): no room for rotation is sampled, and only mirroring is left."""
    patch = (16, 20, 24)
    setup = augmentation_setup(patch)
    assert sampling_patch_size(setup, AUGMENTATIONS["default"](setup)) == setup.initial_patch_size != patch
    assert sampling_patch_size(setup, AUGMENTATIONS["none"](setup)) == patch
    assert [type(t) for t in AUGMENTATIONS["none"](setup)] == [Mirror]
    assert AUGMENTATIONS["none"](augmentation_setup(patch, mirroring=False)) == []
    batch = Batch(torch.randn(2, 1, *patch), torch.randint(0, 3, (2, 1, *patch)))
    out = apply_all([], batch, [])
    assert out.image is batch.image and out.seg is batch.seg
    with pytest.raises(ValueError, match=r"unknown augmentation 'elastic'; available: \['default', 'none'\]"):
        check_component_names(TrainConfig(augmentation="elastic"))
