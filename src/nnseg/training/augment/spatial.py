"""Spatial transforms (reference §1.10 rows 0, 1, 9): rotation + scaling with a crop to the final patch, mirroring.

The loader samples a larger *initial* patch (:func:`initial_patch_size`) so that rotating and scaling never pull in
padding; :class:`SpatialTransform` then maps it to the final patch size in one ``grid_sample`` per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nnseg.training.augment.base import Batch

INITIAL_PATCH_SCALE_RANGE = (0.85, 1.25)
MAX_ROTATION_FOR_PATCH = math.pi / 2


def _rot3(axis: int, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def initial_patch_size(patch_size: Sequence[int], rotation: tuple[float, float], *,
                       scale_range: tuple[float, float] = INITIAL_PATCH_SCALE_RANGE, dummy_2d: bool = False) -> list[int]:
    """nnU-Net's enlarged sampling patch: the bounding box of the patch under the largest rotation, / min scale."""
    angle = min(MAX_ROTATION_FOR_PATCH, max(abs(rotation[0]), abs(rotation[1])))
    coords = np.asarray(patch_size, dtype=np.float64)
    final = coords.copy()
    if len(coords) == 3:
        for axis in range(3):
            final = np.maximum(final, np.abs(coords @ _rot3(axis, angle)))
    else:
        c, s = math.cos(angle), math.sin(angle)
        final = np.maximum(final, np.abs(coords @ np.array([[c, -s], [s, c]])))
    out = (final / min(scale_range)).astype(int).tolist()
    if dummy_2d:
        out[0] = int(patch_size[0])
    return out


@dataclass(frozen=True)
class SpatialParams:
    angles: np.ndarray  # (B, 3) in 3D (rotation about axes 0,1,2), (B, 1) in 2D; zero when not rotated
    scale: np.ndarray  # (B,), 1 when not scaled


def _rotation_matrix(angles: np.ndarray) -> np.ndarray:
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    return _rot3(0, angles[0]) @ _rot3(1, angles[1]) @ _rot3(2, angles[2])


@dataclass(frozen=True)
class SpatialTransform:
    """Rotation (p 0.2, all axes) and isotropic scaling U(0.7, 1.4) (p 0.2), then a centre crop to ``patch_size``.

    With ``dummy_2d`` the first spatial axis is kept (in-plane rotation/scaling of every slice), as nnU-Net does for
    anisotropic 3D patches.
    """

    patch_size: tuple[int, ...]
    rotation: tuple[float, float] = (-math.pi / 6, math.pi / 6)
    p_rotation: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    p_scaling: float = 0.2
    dummy_2d: bool = False

    def _rot_dims(self) -> int:
        dims = len(self.patch_size) - (1 if self.dummy_2d else 0)
        return 1 if dims == 2 else 3

    def sample(self, rng: np.random.Generator, batch: Batch) -> SpatialParams:
        b, n = batch.batch_size, self._rot_dims()
        rot = rng.random(b) < self.p_rotation
        scl = rng.random(b) < self.p_scaling
        angles = rng.uniform(*self.rotation, (b, n)) * rot[:, None]
        scale = np.where(scl, rng.uniform(*self.scaling, b), 1.0)
        return SpatialParams(angles, scale)

    def apply(self, batch: Batch, params: SpatialParams) -> Batch:
        moved = np.any(params.angles != 0, axis=1) | (params.scale != 1)
        image = center_crop(batch.image, self.patch_size)
        seg = None if batch.seg is None else center_crop(batch.seg, self.patch_size)
        idx = np.flatnonzero(moved)
        if len(idx):
            grid = self._grid(batch, params, idx)
            image = image.clone()
            image[idx] = _warp(batch.image[idx], grid, self.dummy_2d)
            if seg is not None:
                seg = seg.clone()
                seg[idx] = _warp_seg(batch.seg[idx], grid, self.dummy_2d)
        return batch.with_(image=image, seg=seg)

    def _grid(self, batch: Batch, params: SpatialParams, idx: np.ndarray) -> torch.Tensor:
        in_shape = np.array(batch.spatial_shape[1:] if self.dummy_2d else batch.spatial_shape, dtype=np.float64)
        out_shape = np.array(self.patch_size[1:] if self.dummy_2d else self.patch_size, dtype=np.float64)
        thetas = []
        for i in idx:
            m = _rotation_matrix(params.angles[i]) * params.scale[i]
            m = np.diag(2 / in_shape) @ m @ np.diag(out_shape / 2)
            rev = m[::-1, ::-1]  # grid_sample orders coordinates from the last axis to the first
            thetas.append(np.concatenate([rev, np.zeros((len(out_shape), 1))], 1))
        theta = torch.as_tensor(np.stack(thetas), dtype=torch.float32, device=batch.image.device)
        return affine_grid(theta, [int(s) for s in out_shape])


def affine_grid(theta: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid(theta, (B, 1, *out_shape), align_corners=False)`` as one matrix product.

    torch's CPU kernel for 3D grids takes ~60 ms for a 40x56x40 patch; this takes ~3 ms and gives the same grid.
    """
    axes = [(torch.arange(n, device=theta.device, dtype=theta.dtype) * 2 + 1) / n - 1 for n in out_shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    coords = [*reversed(mesh), torch.ones_like(mesh[0])]  # grid order is (x, y[, z]) = last array axis first
    base = torch.stack(coords, -1).reshape(-1, len(out_shape) + 1)
    grid = torch.einsum("pk,bjk->bpj", base, theta)
    return grid.reshape(theta.shape[0], *out_shape, len(out_shape))


def center_crop(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Centre crop of the spatial axes of ``(B, C, *spatial)`` to ``patch_size`` (start ``(in - out) // 2``)."""
    slices = [slice(None), slice(None)]
    for size, want in zip(x.shape[2:], patch_size):
        if want > size:
            raise ValueError(f"patch {tuple(patch_size)} larger than the sampled region {tuple(x.shape[2:])}")
        start = (size - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    b, c, d0 = x.shape[:3]
    return x.reshape(b, c * d0, *x.shape[3:])


def _warp(x: torch.Tensor, grid: torch.Tensor, dummy_2d: bool) -> torch.Tensor:
    src = _as_2d(x) if dummy_2d else x
    out = F.grid_sample(src.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if dummy_2d:
        out = out.reshape(x.shape[0], x.shape[1], x.shape[2], *out.shape[2:])
    return out.to(x.dtype)


def _warp_seg(seg: torch.Tensor, grid: torch.Tensor, dummy_2d: bool) -> torch.Tensor:
    """Labels through bilinear interpolation of their one-hot encoding (padding counts as label -1).

    Each output voxel takes the label with the largest interpolated weight; the weight that falls outside the input
    (``1 - sum``) is added to label -1, as if the input were padded with -1.
    """
    lo, hi = int(seg.min()), int(seg.max())
    labels = torch.arange(min(lo, -1), hi + 1, device=seg.device)
    b, c = seg.shape[:2]
    onehot = torch.empty((b, c, len(labels), *seg.shape[2:]), dtype=torch.float32, device=seg.device)
    for i, v in enumerate(labels.tolist()):
        torch.eq(seg, v, out=onehot[:, :, i])
    warped = _warp(onehot.reshape(b, c * len(labels), *seg.shape[2:]), grid, dummy_2d)
    warped = warped.reshape(b, c, len(labels), *warped.shape[2:])
    warped[:, :, 0] += 1 - warped.sum(2)  # labels[0] is -1
    return labels[warped.max(2).indices].to(seg.dtype)


@dataclass(frozen=True)
class MirrorParams:
    flips: np.ndarray  # (B, len(axes)) bool


@dataclass(frozen=True)
class Mirror:
    """Flip each allowed spatial axis with p = 0.5 (image and labels together)."""

    axes: tuple[int, ...] = (0, 1, 2)
    p_per_axis: float = 0.5

    def sample(self, rng: np.random.Generator, batch: Batch) -> MirrorParams:
        return MirrorParams(rng.random((batch.batch_size, len(self.axes))) < self.p_per_axis)

    def apply(self, batch: Batch, params: MirrorParams) -> Batch:
        if not params.flips.any():
            return batch
        image = batch.image.clone()
        seg = None if batch.seg is None else batch.seg.clone()
        for i in range(batch.batch_size):
            dims = [a + 1 for a, f in zip(self.axes, params.flips[i]) if f]
            if dims:
                image[i] = torch.flip(batch.image[i], dims)
                if seg is not None:
                    seg[i] = torch.flip(batch.seg[i], dims)
        return batch.with_(image=image, seg=seg)
