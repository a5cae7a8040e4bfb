"""nnU-Net's default training and validation transforms, composed (reference §1.10)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nnseg.registry import Registry
from nnseg.training.augment.base import Batch, Transform
from nnseg.training.augment.intensity import (
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    MultiplicativeBrightness,
    SimulateLowResolution,
)
from nnseg.training.augment.spatial import Mirror, SpatialTransform, initial_patch_size

ANISO_THRESHOLD = 3
ROT_3D = (-30 / 360 * 2 * math.pi, 30 / 360 * 2 * math.pi)
ROT_FULL = (-math.pi, math.pi)
ROT_2D_ELONGATED = (-15 / 360 * 2 * math.pi, 15 / 360 * 2 * math.pi)
ELONGATED_2D_RATIO = 1.5


@dataclass(frozen=True)
class AugmentationSetup:
    """What nnU-Net derives from the patch size: rotation range, dummy-2D, mirror axes, initial patch."""

    patch_size: tuple[int, ...]
    rotation: tuple[float, float]
    dummy_2d: bool
    mirror_axes: tuple[int, ...]
    initial_patch_size: tuple[int, ...]


# name -> the training transforms for an AugmentationSetup (TrainConfig.augmentation picks one)
AUGMENTATIONS: Registry[Callable[[AugmentationSetup], list[Transform]]] = Registry("augmentation")


def augmentation_setup(patch_size: Sequence[int], *, mirroring: bool = True) -> AugmentationSetup:
    """nnU-Net's ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``."""
    patch = tuple(int(p) for p in patch_size)
    if len(patch) == 2:
        dummy = False
        rotation = ROT_2D_ELONGATED if max(patch) / min(patch) > ELONGATED_2D_RATIO else ROT_FULL
        axes: tuple[int, ...] = (0, 1)
    elif len(patch) == 3:
        dummy = max(patch) / patch[0] > ANISO_THRESHOLD
        rotation = ROT_FULL if dummy else ROT_3D
        axes = (0, 1, 2)
    else:
        raise ValueError(f"patch size must have 2 or 3 axes, got {patch}")
    initial = initial_patch_size(patch, rotation, dummy_2d=dummy)
    return AugmentationSetup(patch, rotation, dummy, axes if mirroring else (), tuple(initial))


@AUGMENTATIONS.register("none")
def mirror_only_transforms(setup: AugmentationSetup) -> list[Transform]:
    """No spatial or intensity augmentation; mirroring only where ``setup`` allows it (nnUNetTrainerNoDA allows none)."""
    return [Mirror(setup.mirror_axes)] if setup.mirror_axes else []


@AUGMENTATIONS.register("default")
def default_transforms(setup: AugmentationSetup) -> list[Transform]:
    """The training transforms in nnU-Net's order (spatial, noise, blur, brightness, contrast, low-res, gamma x2, mirror)."""
    transforms: list[Transform] = [
        SpatialTransform(setup.patch_size, rotation=setup.rotation, dummy_2d=setup.dummy_2d),
        GaussianNoise(),
        GaussianBlur(),
        MultiplicativeBrightness(),
        Contrast(),
        SimulateLowResolution(ignore_axes=(0,) if setup.dummy_2d else ()),
        Gamma(p=0.1, invert_image=True),
        Gamma(p=0.3, invert_image=False),
    ]
    if setup.mirror_axes:
        transforms.append(Mirror(setup.mirror_axes))
    return transforms


def sampling_patch_size(setup: AugmentationSetup, transforms: Sequence[Transform]) -> tuple[int, ...]:
    """The patch to sample for ``transforms``: enlarged for rotation/scaling, the final patch when nothing moves voxels.

    Without a spatial transform (``augmentation="none"``, nnU-Net's ``nnUNetTrainerNoDA``) there is nothing to make room
    for, so the margin would only be cropped away again.
    """
    spatial = any(isinstance(t, SpatialTransform) for t in transforms)
    return setup.initial_patch_size if spatial else setup.patch_size


def sample_all(transforms: Sequence[Transform], rng: np.random.Generator, batch: Batch) -> list[Any]:
    """Sample every transform's parameters up front (shapes only depend on the batch's size and channels)."""
    return [t.sample(rng, batch) for t in transforms]


def apply_all(transforms: Sequence[Transform], batch: Batch, params: Sequence[Any]) -> Batch:
    for t, p in zip(transforms, params):
        batch = t.apply(batch, p)
    return batch


def mask_outside(batch: Batch, channels: Sequence[int]) -> Batch:
    """nnU-Net's MaskImageTransform: voxels outside the non-zero mask (seg < 0) set to 0 in ``channels``."""
    if not channels or batch.seg is None:
        return batch
    image = batch.image.clone()
    outside = batch.seg[:, :1] < 0
    for c in channels:
        image[:, c:c + 1] = torch.where(outside, torch.zeros_like(image[:, c:c + 1]), image[:, c:c + 1])
    return batch.with_(image=image)


def remove_negative_labels(seg: torch.Tensor) -> torch.Tensor:
    """nnU-Net's RemoveLabelTransform(-1 -> 0)."""
    return torch.where(seg < 0, torch.zeros_like(seg), seg)


def labels_to_regions(seg: torch.Tensor, regions: Sequence[Sequence[int]], *, ignore_label: int | None = None) -> torch.Tensor:
    """``(B, 1, ...)`` labels -> ``(B, R[+1], ...)`` binary regions; with an ignore label a last channel marks it."""
    channels = [torch.isin(seg[:, 0], torch.as_tensor(list(r), device=seg.device)) for r in regions]
    if ignore_label is not None:
        channels.append(seg[:, 0] == ignore_label)
    return torch.stack(channels, 1).to(torch.int8)


def downsample_for_deep_supervision(seg: torch.Tensor, scales: Sequence[Sequence[float]]) -> list[torch.Tensor]:
    """nnU-Net's DownsampleSegForDSTransform: nearest-neighbour targets at each deep-supervision scale."""
    out = []
    spatial = seg.shape[2:]
    for scale in scales:
        if all(s == 1 for s in scale):
            out.append(seg)
            continue
        size = [round(n * s) for n, s in zip(spatial, scale)]
        out.append(F.interpolate(seg.float(), size=size, mode="nearest-exact").to(seg.dtype))
    return out
